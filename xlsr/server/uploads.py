"""Reading a request's multipart form into memory: the fields and the one audio file, within a size limit.

Frameworks' form parsers spool a large upload to a temporary file (Starlette's past 1 MB); the server writes
nothing of a request to disk, so the body is read here, chunk by chunk as it arrives, through python-multipart's
push parser, and the upload is held in memory only (`Upload`, which `audio.py` decodes like a file). The limit
is checked against Content-Length before reading and against the bytes as they come; a body that ends before
the closing boundary, or a client that goes away mid-upload, is a cut-off upload.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath, PureWindowsPath

from ..audio import EncodedAudio
from .errors import RequestError

MAX_FIELDS = 32
MAX_FIELD_BYTES = 4096


class Upload(EncodedAudio):
    """An uploaded audio file, in memory. Its name is the client's file name without any folder: a label for
    messages and results, never opened."""

    def __init__(self, data: bytes, filename: str = ""):
        self.data = data
        name = PureWindowsPath(PurePosixPath(filename or "upload").name).name.replace("\n", " ")[:200]
        self.name = name or "upload"
        self.suffix = PurePosixPath(self.name).suffix

    def read_bytes(self) -> bytes:
        return self.data

    def __str__(self) -> str:
        return self.name


@dataclass
class Form:
    fields: dict[str, list[str]] = field(default_factory=dict)
    file: Upload | None = None
    file_field: str | None = None

    def get(self, name: str) -> str | None:
        values = self.fields.get(name)
        return values[-1] if values else None

    def get_all(self, name: str) -> list[str]:
        return self.fields.get(name, []) + self.fields.get(f"{name}[]", [])


class CutOff(Exception):
    """The client went away, or the body ended, before the upload was complete."""


async def read_form(content_type: str | None, content_length: str | None, chunks: AsyncIterator[bytes],
                    max_bytes: int) -> Form:  # fmt: skip
    """The request's multipart form; RequestError for a body that is too large, not multipart or malformed,
    CutOff for one that was cut off."""
    from python_multipart.multipart import MultipartParser, parse_options_header

    kind, params = parse_options_header(content_type or "")
    if kind == b"application/x-www-form-urlencoded":  # a form without a file
        raise RequestError(400, "missing_field", "no audio: send it as the multipart/form-data field 'file'", "file")
    if kind != b"multipart/form-data" or b"boundary" not in params:
        raise RequestError(400, "invalid_request", "send the audio as multipart/form-data with a 'file' field")
    too_large = RequestError(
        413, "upload_too_large", f"the upload is larger than the server's limit of {max_bytes / 1e6:g} MB"
    )
    if content_length is not None and content_length.isdigit() and int(content_length) > max_bytes:
        raise too_large
    parts = _Parts()
    parser = MultipartParser(params[b"boundary"], parts.callbacks())
    received = 0
    try:
        async for chunk in chunks:
            received += len(chunk)
            if received > max_bytes:
                raise too_large
            parser.write(chunk)
    except RequestError:
        raise
    except CutOff:
        raise
    except Exception as e:  # python-multipart's parse errors; Starlette's ClientDisconnect
        if type(e).__name__ == "ClientDisconnect":
            raise CutOff("the client went away during the upload") from None
        raise RequestError(400, "invalid_request", f"malformed multipart body ({e})") from None
    if not parts.ended:
        raise CutOff("the body ended before the form's closing boundary (a cut-off upload)")
    return parts.form


class _Parts:
    """python-multipart's callbacks, collecting parts into a Form."""

    def __init__(self) -> None:
        self.form, self.ended = Form(), False
        self.header_name, self.header_value, self.headers = b"", b"", {}
        self.options: dict[bytes, bytes] = {}
        self.data: list[bytes] = []
        self.size = 0
        self.count = 0

    def callbacks(self) -> dict:
        return {name: getattr(self, name) for name in (
            "on_part_begin", "on_part_data", "on_part_end", "on_header_field", "on_header_value", "on_header_end",
            "on_headers_finished", "on_end")}  # fmt: skip

    def on_part_begin(self) -> None:
        self.headers, self.data, self.size = {}, [], 0
        self.count += 1
        if self.count > MAX_FIELDS:
            raise RequestError(400, "invalid_request", f"more than {MAX_FIELDS} form fields")

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        self.headers[self.header_name.lower()] = self.header_value
        self.header_name, self.header_value = b"", b""

    def on_headers_finished(self) -> None:
        from python_multipart.multipart import parse_options_header

        self.options = parse_options_header(self.headers.get(b"content-disposition", b""))[1]

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        self.size += end - start
        if b"filename" not in self.options and self.size > MAX_FIELD_BYTES:
            raise RequestError(400, "invalid_request", f"a form field is longer than {MAX_FIELD_BYTES} bytes")
        self.data.append(data[start:end])

    def on_part_end(self) -> None:
        options = self.options
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if not name:
            raise RequestError(400, "invalid_request", "a form part has no name (Content-Disposition)")
        value = b"".join(self.data)
        if b"filename" in options:
            if self.form.file is not None:
                raise RequestError(400, "invalid_request", "one audio file per request", param=name)
            self.form.file = Upload(value, options[b"filename"].decode("utf-8", "replace"))
            self.form.file_field = name
        else:
            self.form.fields.setdefault(name, []).append(value.decode("utf-8", "replace"))

    def on_end(self) -> None:
        self.ended = True

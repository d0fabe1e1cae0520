"""Renaming state-dict keys between formats with one table of templates read in both directions.

A template names the parts that vary: `{n}` a layer index, `{w}` weight or bias, `{p}` an attention
projection (q, k, v, out). A key that no template matches is an error, never a silent skip.
"""

from __future__ import annotations

import re

_FIELDS = {"n": r"\d+", "w": r"weight|bias", "p": r"q|k|v|out"}


def _compile(template: str) -> re.Pattern:
    pattern = re.escape(template)
    for name, regex in _FIELDS.items():
        pattern = pattern.replace(re.escape("{" + name + "}"), f"(?P<{name}>{regex})")
    return re.compile(pattern + "$")


class KeyMap:
    """rules: (foreign template, xlsr template) pairs; for writing, the first rule that matches wins."""

    def __init__(self, rules: list[tuple[str, str]]):
        self.rules = rules
        self._to_xlsr = [(_compile(f), x) for f, x in rules]
        self._from_xlsr = [(_compile(x), f) for f, x in rules]

    @staticmethod
    def _apply(key: str, table: list[tuple[re.Pattern, str]]) -> str | None:
        for pattern, template in table:
            m = pattern.match(key)
            if m:
                return template.format(**m.groupdict())
        return None

    def to_xlsr(self, key: str) -> str | None:
        return self._apply(key, self._to_xlsr)

    def from_xlsr(self, key: str) -> str | None:
        return self._apply(key, self._from_xlsr)

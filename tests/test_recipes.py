"""The CPU recipes, end to end (slow: two CI jobs of about an hour each on 2 cores), and the reading of their
result tables (fast: part of the default suite).

`.ci/slow` runs the reference recipe (corpus, pretraining, CTC, language ID) and the pretrained-vs-random
comparison on its pretraining; `.ci/slow-tasks` (the tests also marked `tasks`) the recipes built on the
reference models as shipped: speech translation from recipes/results/reference_pretrained (the reference
pretraining's output) and speaker ID from the bundled ASR model.

They check the issues' learning claims on espeak-ng speech: pretraining reaches a contrastive accuracy well
above chance with a healthy codebook; CTC fine-tuning transcribes held-out phrases with a CER well below 50%;
a pretrained start beats a random one on the same budget; language ID is well above chance over 10
languages; and the recipe reproduces the figures of the bundled models (recipes/results/reference_model.md).
Tables are read by their column names, never by position.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import needs_tool

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "recipes" / "results" / "reference_model.md"
CER, WER, LID = "CER %", "WER %", "language ID accuracy %"
SID_RESULTS = ROOT / "recipes" / "results" / "speaker_id.md"
PRETRAINED = ROOT / "recipes" / "results" / "reference_pretrained"  # the reference pretraining's output
SID = "accuracy %"
ST_RESULTS = ROOT / "recipes" / "results" / "translation.md"
HELD_OUT, VOICES = "pair (held-out sentences)", "pair (held-out voices)"
BLEU = {start: f"BLEU {start}" for start in ("pretrained", "random", "baseline")}
CHRF = {start: f"chrF {start}" for start in ("pretrained", "random", "baseline")}
MARGIN_BLEU, MARGIN_CHRF = 10, 10  # how far above the baseline "translates" is, on training sentences by new voices


def _number(cell: str) -> float | str:
    try:
        return float(cell)
    except ValueError:
        return cell


def markdown_table(text: str, *columns: str, first: str = "") -> dict[str, dict[str, float | str]]:
    """The first Markdown table in `text` whose header has all `columns` (and starts with `first`):
    {first cell: {column name: cell}}, numbers as floats."""
    lines = text.splitlines()
    for i, line in enumerate(lines[:-1]):
        if not (line.startswith("|") and re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", lines[i + 1].strip())):
            continue
        header = [c.strip() for c in line.strip().strip("|").split("|")]
        if not (header[0].startswith(first) and all(c in header for c in columns)):
            continue
        rows = {}
        for row in lines[i + 2 :]:
            if not row.startswith("|"):
                break
            cells = [c.strip() for c in row.strip().strip("|").split("|")]
            assert len(cells) == len(header), (header, row)
            rows[cells[0]] = {name: _number(cell) for name, cell in zip(header, cells)}
        return rows
    raise AssertionError(f"no table with the columns {columns} in:\n{text}")


def aligned_table(text: str, first: str) -> dict[str, dict[str, float | str]]:
    """A table printed as aligned text (columns apart by 2+ spaces in the header, single words in the rows)
    whose header starts with `first`: {first cell: {column name: cell}}."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == [first])
    header = re.split(r"\s{2,}", lines[start].strip())
    rows = {}
    for row in lines[start + 1 :]:
        cells = row.split()
        if len(cells) != len(header):
            break
        rows[cells[0]] = {name: _number(cell) for name, cell in zip(header, cells)}
    return rows


def check_reference_figures(out: str, shipped: str) -> None:
    """The claims on recipes/reference_model.py's output `out`, against the bundled models' table `shipped`.

    On the CPU that made the bundled models the recipe reprints their table exactly; on another one (other
    vector kernels, other rounding: ANOTHER_CPU had AVX-512 and AMX) the run parts from it as a run of another
    seed would (its pretraining already ends elsewhere), so the figures are compared within the noise of the
    test set. Overall (300 clips; two runs' language-ID
    accuracies near 95% differ by 1.8 points at one standard deviation): CER within 5 points, language ID within
    6. Each language (30 clips: one clip is 3.3 points): CER within 8 points, language ID well learnt (above 60%,
    chance 10%), since per-language accuracy of 30 clips varies too much between runs to be compared (the
    ANOTHER_CPU run: Spanish 80.0% against 96.7%)."""
    got = markdown_table(out, "language", CER, LID)
    accuracy = float(re.search(r"contrastive accuracy ([\d.]+)%", out).group(1))
    perplexity = float(re.search(r"code perplexity (\d+)", out).group(1))
    assert accuracy > 3 * 100 / 51 and perplexity > 20  # well above chance, no codebook collapse
    assert got["all"][CER] < 50 and got["all"][LID] > 3 * 10  # chance for language ID: 10%
    was = markdown_table(shipped, "language", CER, LID)
    assert set(got) == set(was), (got, was)
    assert abs(got["all"][CER] - was["all"][CER]) < 5, (got["all"], was["all"])
    assert abs(got["all"][LID] - was["all"][LID]) < 6, (got["all"], was["all"])
    for lang, row in was.items():
        assert abs(got[lang][CER] - row[CER]) < 8, (lang, got[lang], row)
        assert got[lang][LID] > 60, (lang, got[lang], row)


# The reference recipe run end to end by .ci/slow on a clean clone (2026-12-03) on a CPU with AVX-512 and AMX,
# not the one that made the bundled models: pretraining's held-out contrastive accuracy 11.1% and code
# perplexity 90 (bundled: 11.9%, 92), then this table (bundled: CER 37.4%, language ID 96.7%).
ANOTHER_CPU = """\
| language | test clips | CER % | WER % | language ID accuracy % |
|---|---|---|---|---|
| de | 30 | 37.5 | 93.3 | 100.0 |
| en | 30 | 53.4 | 97.8 | 93.3 |
| es | 30 | 38.5 | 92.2 | 80.0 |
| fr | 30 | 54.1 | 97.7 | 90.0 |
| id | 30 | 24.5 | 87.0 | 100.0 |
| it | 30 | 37.5 | 97.2 | 96.7 |
| nl | 30 | 39.1 | 96.2 | 86.7 |
| pl | 30 | 41.8 | 95.4 | 93.3 |
| pt | 30 | 47.0 | 94.1 | 93.3 |
| sw | 30 | 26.4 | 78.4 | 100.0 |
| all | 300 | 39.3 | 92.7 | 93.3 |

""" + (
    "Pretraining (held-out audio): contrastive accuracy 11.1% (chance 2.0% among 1 + 50 candidates), code perplexity"
    " 90 of 128 entries.\n"
)


def check_pretrained_beats_random(out: str) -> None:
    """The claim on recipes/ctc_pretrained_vs_random.py's output: "well below 50%", and well below random."""
    cer = {name: row[CER] for name, row in aligned_table(out, "start").items()}
    assert cer["pretrained"] < 42 and cer["pretrained"] < cer["random"] - 10, out


def translation_tables(text: str) -> dict[str, dict[str, dict[str, float | str]]]:
    """recipes/translation.py's two tables: {set: {pair: {column: cell}}}."""
    return {key: markdown_table(text, *BLEU.values(), *CHRF.values(), first=key) for key in (HELD_OUT, VOICES)}


def distinct_translations(text: str) -> dict[str, tuple[int, int]]:
    """recipes/translation.py's counts of distinct translations: {set: (pretrained, random)}."""
    found = re.findall(r"Distinct translations of the \d+ clips \(([^)]*)\): pretrained (\d+), random (\d+)\.", text)
    return {key: (int(a), int(b)) for key, a, b in found}


def check_translation_figures(out: str, shipped: str) -> None:
    """The claims on recipes/translation.py's output: on sentences never trained on, the pretrained encoder
    gives the higher BLEU (XLS-R's claim at toy scale); on training sentences by voices never heard, it
    translates far better than the baseline (the most frequent training translation) and says different
    things for different clips (it listens); within noise of the shipped table."""
    got, was = translation_tables(out), translation_tables(shipped)
    held, voices = got[HELD_OUT]["all"], got[VOICES]["all"]
    assert held[BLEU["pretrained"]] > held[BLEU["random"]], out
    assert voices[BLEU["pretrained"]] > voices[BLEU["baseline"]] + MARGIN_BLEU, out
    assert voices[CHRF["pretrained"]] > voices[CHRF["baseline"]] + MARGIN_CHRF, out
    assert distinct_translations(out)[VOICES.removeprefix("pair (").rstrip(")")][0] >= voices["clips"] / 4, out
    for key in (HELD_OUT, VOICES):
        assert set(got[key]) == {"de-en", "es-en", "fr-en", "it-en", "all"}, got[key]
        assert abs(got[key]["all"][CHRF["pretrained"]] - was[key]["all"][CHRF["pretrained"]]) < 10, (key, out)


# --- fast: the reading of the tables --------------------------------------------------------------------


def test_the_results_table_is_read_by_its_column_names():
    text = RESULTS.read_text()
    table = markdown_table(text, "language", CER, WER, LID)
    assert set(table) >= {"de", "en", "fr", "all"} and len(table) == 11
    row = next(line for line in text.splitlines() if line.startswith("| all |"))
    clips, cer, wer, lid = (float(c) for c in row.strip(" |").split("|")[1:])
    assert table["all"] == {"language": "all", "test clips": clips, CER: cer, WER: wer, LID: lid}
    # the same table with its columns in another order reads the same
    lines = [line.strip(" |").split("|") for line in text.splitlines() if line.startswith("|")]
    swapped = "\n".join("|" + "|".join([c[0], c[4], c[3], c[2], c[1]]) + "|" for c in lines)
    assert markdown_table(swapped, "language", CER) == table


def test_the_readme_shows_the_bundled_models_table():
    readme = markdown_table((ROOT / "README.md").read_text(), "language", CER, WER, LID)
    assert readme == markdown_table(RESULTS.read_text(), "language", CER, WER, LID)


def test_the_bundled_figures_pass_the_recipe_checks():
    """The recipe reproduced the bundled figures exactly (CER 37.4%, language ID 96.7%): its own table, read as
    the recipe prints it, passes the slow test's checks (read one column off, it failed on the WER)."""
    text = RESULTS.read_text()
    check_reference_figures(text, text)
    worse = text.replace(f"| {markdown_table(text, CER)['all'][CER]} |", "| 55.0 |")
    with pytest.raises(AssertionError):
        check_reference_figures(worse, text)


def test_a_run_on_another_cpu_passes_the_recipe_checks_and_worse_ones_do_not():
    """ANOTHER_CPU (a real run, not bit-identical to the bundled one) passes; a run that is worse overall by more
    than the test set's noise, or that has not learnt one language, fails."""
    shipped = RESULTS.read_text()
    check_reference_figures(ANOTHER_CPU, shipped)
    for before, after in (
        ("| all | 300 | 39.3 | 92.7 | 93.3 |", "| all | 300 | 39.3 | 92.7 | 90.0 |"),  # language ID 6.7 below
        ("| all | 300 | 39.3 | 92.7 | 93.3 |", "| all | 300 | 43.0 | 92.7 | 93.3 |"),  # CER 5.6 above
        ("| es | 30 | 38.5 | 92.2 | 80.0 |", "| es | 30 | 38.5 | 92.2 | 56.7 |"),  # Spanish barely learnt
        ("| fr | 30 | 54.1 |", "| fr | 30 | 63.0 |"),  # French CER 8.7 above
        ("| sw | 30 | 26.4 | 78.4 | 100.0 |\n", ""),  # a language missing
    ):
        assert before in ANOTHER_CPU
        with pytest.raises(AssertionError):
            check_reference_figures(ANOTHER_CPU.replace(before, after), shipped)


def check_speaker_figures(out: str, shipped: str) -> None:
    """The claims on recipes/speaker_id.py's output: far above chance (1 in 8), and within noise of the table
    it shipped (60 test clips: one clip is 1.7 points)."""
    got = markdown_table(out, "speaker", SID)
    assert got["all"][SID] > 4 * 100 / 8 and len(got) == 9
    assert abs(got["all"][SID] - markdown_table(shipped, "speaker", SID)["all"][SID]) < 10


def test_the_readme_shows_the_speaker_id_table_and_it_passes_its_checks():
    readme = markdown_table((ROOT / "README.md").read_text(), "speaker", SID)
    assert readme == markdown_table(SID_RESULTS.read_text(), "speaker", SID)
    check_speaker_figures(SID_RESULTS.read_text(), SID_RESULTS.read_text())
    with pytest.raises(AssertionError):
        check_speaker_figures(
            SID_RESULTS.read_text().replace("| all | 60 | ", "| all | 60 | 1"), SID_RESULTS.read_text()
        )


def test_the_pretrained_vs_random_output_is_read_by_its_column_names():
    """The figures of README's table, printed the way recipes/ctc_pretrained_vs_random.py prints them."""
    readme = markdown_table((ROOT / "README.md").read_text(), CER, WER, first="start")
    (pre,) = (r for k, r in readme.items() if k.startswith("pretrained"))
    (rand,) = (r for k, r in readme.items() if k.startswith("random"))
    lines = [f"{'start':<12} {'CER %':>7} {'WER %':>7} {'minutes':>8}"]
    for name, r in (("pretrained", pre), ("random", rand)):
        lines.append(f"{name:<12} {r[CER]:>7.1f} {r[WER]:>7.1f} {14.0:>8.1f}")
    out = "CTC fine-tuning on fr (1000 clips, 3000 updates each), test phrases never seen in training:\n"
    out += "\n".join(lines) + "\n"
    table = aligned_table(out, "start")
    assert table["pretrained"][CER] == pre[CER] and table["random"][WER] == rand[WER]
    check_pretrained_beats_random(out)


def test_the_readme_shows_the_translation_tables_and_they_pass_their_checks():
    """README quotes recipes/translation.py's tables as the recipe wrote them, and they make its claims."""
    readme, shipped = (ROOT / "README.md").read_text(), ST_RESULTS.read_text()
    assert translation_tables(readme) == translation_tables(shipped)
    assert all(f"pretrained {a}, random {b}" in readme for a, b in distinct_translations(shipped).values())
    check_translation_figures(shipped, shipped)
    held = translation_tables(shipped)[HELD_OUT]["all"]
    row = next(line for line in shipped.splitlines() if line.startswith("| all |"))  # the held-out table's
    swapped = shipped.replace(row, row.replace(f"| {held[BLEU['pretrained']]:.1f} |", "| -1.0 |", 1))
    with pytest.raises(AssertionError):  # a random start as good as the pretrained one fails the claim
        check_translation_figures(swapped, shipped)


def test_the_shipped_reference_pretraining_is_a_float32_small_model_with_its_quantizer():
    """recipes/results/reference_pretrained: the translation recipe's start (the reference pretraining's output),
    kept in float32 so that starting from it is starting from the stage's checkpoint, bit for bit."""
    from xlsr.checkpoints import load_model
    from xlsr.config import preset

    model = load_model(PRETRAINED)
    small = preset("small")
    assert model.cfg.head == "pretraining" and model.cfg.quantize_targets
    assert (model.cfg.encoder_layers, model.cfg.encoder_embed_dim) == (small.encoder_layers, small.encoder_embed_dim)
    import safetensors

    with safetensors.safe_open(PRETRAINED / "model.safetensors", "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F32"}


def test_under_ci_a_skip_for_a_missing_tool_fails(tmp_path, monkeypatch):
    """tests/conftest.py's hook, in a pytest of its own: with CI set and espeak-ng off PATH, the skips that
    name espeak-ng fail, any other skip stays a skip; without CI (or CI=false) nothing is turned into a failure."""
    shutil.copy(ROOT / "tests" / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_tools.py").write_text(
        textwrap.dedent("""
        import pytest
        from conftest import needs_tool

        @needs_tool("espeak-ng")
        def test_speaks():
            pass

        @pytest.mark.skipif(True, reason="espeak-ng (Debian package) not installed")
        def test_marked():
            pass

        @pytest.mark.skipif(True, reason="a GPU is present")
        def test_other():
            pass
        """)
    )
    bin_dir = str(Path(sys.executable).parent)  # python only: no espeak-ng on this PATH
    assert shutil.which("espeak-ng", path=bin_dir) is None
    env = os.environ | {"PATH": bin_dir, "CI": "true"}
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)]
    ci = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300).stdout
    # the skip happens at setup, so pytest counts these failures as errors
    assert re.search(r"\b1 skipped\b", ci) and re.search(r"\b2 errors\b", ci) and "passed" not in ci, ci
    assert ci.count("espeak-ng is not installed, and under CI the tests that need it must run") >= 2, ci

    import conftest

    monkeypatch.setenv("PATH", bin_dir)
    assert conftest.missing_tool("espeak-ng (Debian package) not installed") == "espeak-ng"
    assert conftest.missing_tool("a GPU is present") is None
    for value, expected in (("true", True), ("1", True), ("false", False), ("0", False), ("", False)):
        monkeypatch.setenv("CI", value)
        assert conftest.in_ci() is expected
    monkeypatch.delenv("CI")
    assert not conftest.in_ci()


# --- slow: the recipes themselves -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    work = tmp_path_factory.mktemp("reference")
    run = subprocess.run([sys.executable, str(ROOT / "recipes" / "reference_model.py"), "--work", str(work)],
                         capture_output=True, text=True, timeout=75 * 60)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    return work, run.stdout


@pytest.mark.slow
@needs_tool("espeak-ng")
@pytest.mark.timeout(80 * 60)
def test_the_reference_recipe_learns_and_reproduces_the_bundled_figures(reference):
    _, out = reference
    check_reference_figures(out, RESULTS.read_text())


@pytest.mark.slow
@needs_tool("espeak-ng")
@pytest.mark.timeout(50 * 60)
def test_a_pretrained_start_beats_a_random_one(reference):
    work, _ = reference
    run = subprocess.run([sys.executable, str(ROOT / "recipes" / "ctc_pretrained_vs_random.py"), "--work", str(work)],
                         capture_output=True, text=True, timeout=45 * 60)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    check_pretrained_beats_random(run.stdout)


@pytest.mark.slow
@pytest.mark.tasks
@needs_tool("espeak-ng")
@pytest.mark.timeout(20 * 60)
def test_the_speaker_id_recipe_reproduces_its_figures(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "recipes" / "speaker_id.py"), "--work", str(tmp_path)],
                         capture_output=True, text=True, timeout=18 * 60)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    check_speaker_figures(run.stdout, SID_RESULTS.read_text())


@pytest.mark.slow
@pytest.mark.tasks
@needs_tool("espeak-ng")
@pytest.mark.timeout(75 * 60)
def test_the_translation_recipe_reproduces_its_figures(tmp_path):
    """recipes/translation.py from the reference pretraining as shipped (its corpus, the four runs, the tables)."""
    run = subprocess.run([sys.executable, str(ROOT / "recipes" / "translation.py"), "--work", str(tmp_path),
                          "--encoder", str(PRETRAINED)], capture_output=True, text=True, timeout=70 * 60)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    check_translation_figures(run.stdout, ST_RESULTS.read_text())

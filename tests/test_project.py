"""The project's promises about itself: CI runs README's test command verbatim."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci_line = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.startswith("python3 -m venv")]
    assert len(ci_line) == 1
    assert f"```bash\n{ci_line[0]}\n```" in readme
    assert "pytest" in ci_line[0] and "torch==2.13.0" in ci_line[0]


def test_the_readme_first_command_runs_the_bundled_models_on_the_examples():
    readme = (ROOT / "README.md").read_text()
    first = readme.split("```bash\n")[1].split("\n```")[0]
    assert first.endswith("xlsr transcribe examples/*.wav && xlsr identify examples/*.wav"
                          " && xlsr translate examples/translation/*.wav")  # fmt: skip
    assert (ROOT / "examples" / "examples.tsv").exists()
    assert (ROOT / "examples" / "translation" / "translation.tsv").exists()

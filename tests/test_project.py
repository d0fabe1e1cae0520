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


def test_the_two_slow_jobs_run_every_slow_test_once():
    """.ci/slow and .ci/slow-tasks: each a pytest over a marker expression; together every test marked slow
    (none left to no job, none run twice), and each job holds some."""
    import re
    import subprocess
    import sys

    def collected(expression: str) -> set[str]:
        args = [sys.executable, "-m", "pytest", "-q", "--collect-only", "-p", "no:cacheprovider", "-m", expression]
        run = subprocess.run([*args, str(ROOT / "tests")], capture_output=True, text=True, cwd=ROOT)
        return {line for line in run.stdout.splitlines() if "::" in line}

    jobs = {}
    for name in ("slow", "slow-tasks"):
        script = (ROOT / ".ci" / name).read_text()
        (expression,) = re.findall(r"python -m pytest -q -m '([^']+)'$", script, re.M)
        jobs[name] = collected(expression)
    every = collected("slow")
    assert all(jobs.values()) and not (jobs["slow"] & jobs["slow-tasks"])
    assert jobs["slow"] | jobs["slow-tasks"] == every and len(every) >= 4


def test_readme_names_every_test_file_that_needs_a_system_tool():
    """README's test set-up paragraph says which tests need each Debian package (`conftest.SYSTEM_TOOLS`)."""
    import re

    from conftest import SYSTEM_TOOLS

    readme = (ROOT / "README.md").read_text()
    setup = readme.split("Install and run the tests", 1)[1].split("```", 1)[0]
    for tool in SYSTEM_TOOLS:
        users = {p.name for p in (ROOT / "tests").glob("test_*.py")
                 if re.search(rf'(needs_tool|which)\("{tool}"\)', p.read_text())}  # fmt: skip
        missing = sorted(name for name in users if f"tests/{name}" not in setup)
        assert not missing, f"README's test set-up does not name {missing} as needing {tool}"

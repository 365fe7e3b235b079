"""CI runs exactly what the README tells a newcomer to run."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_command(marker: str) -> str:
    lines = (ROOT / "README.md").read_text().splitlines()
    start = lines.index(marker)
    fence = next(i for i in range(start, len(lines)) if lines[i].startswith("```"))
    return lines[fence + 1]


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert ci[-1] == _readme_command("<!-- test-command -->")


def test_readme_opens_with_two_setup_commands() -> None:
    demo = _readme_command("<!-- demo-command -->")
    assert demo.startswith("python3 -m venv .venv && ")
    assert demo.endswith("sift-worker demo")

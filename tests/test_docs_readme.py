"""The README stays true: its help text is the real one, its test command is CI's."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def rat_help() -> str:
    env = dict(os.environ, COLUMNS="100", PYTHONPATH=str(ROOT / "src"))
    done = subprocess.run(
        [sys.executable, "-m", "rat", "serve", "--help"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return done.stdout.rstrip()


def test_readme_shows_the_real_serve_help() -> None:
    readme = (ROOT / "README.md").read_text()
    m = re.search(r"## `rat serve --help`\n\n```text\n(.*?)\n```", readme, re.S)
    assert m, "README lacks the rat serve --help section"
    assert m.group(1) == rat_help()


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "python3 dev.py serve" in readme
    assert "python3 dev.py test" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python3 dev.py test" in ci

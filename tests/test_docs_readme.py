"""The README stays true: its help text, its sample log and its commands are the real ones."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from conftest import ServerProcess, recv_lines
from test_guide import FENCE, PYTHON_COMMAND, trace_matches

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
GUIDE_INDEX = ROOT / "docs" / "guide" / "README.md"
ACTIVATE = "source .venv/bin/activate"


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
    readme = README.read_text()
    m = re.search(r"## `rat serve --help`\n\n```text\n(.*?)\n```", readme, re.S)
    assert m, "README lacks the rat serve --help section"
    assert m.group(1) == rat_help()


def test_ci_runs_the_readme_test_command() -> None:
    readme = README.read_text()
    assert "python3 dev.py serve" in readme
    assert "python3 dev.py test" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python3 dev.py test" in ci


def test_the_first_screen_points_learners_to_the_guide() -> None:
    first_screen = "\n".join(README.read_text().splitlines()[:25])
    assert "](docs/guide/README.md)" in first_screen


def section(heading: str) -> str:
    """The README's section under `## heading`, up to the next `## ` heading."""
    readme = README.read_text()
    start = readme.index(f"\n## {heading}\n")
    end = readme.find("\n## ", start + 1)
    return readme[start : end if end >= 0 else len(readme)]


def test_readme_names_every_module_of_rat() -> None:
    """The layout says where each part lives: no file or package left out, none made up."""
    layout = section("How the code is laid out")
    items = [line for line in layout.splitlines() if line.startswith(("- ", "  "))]
    listed = set(re.findall(r"`(\w+\.py)`", "\n".join(items)))
    spine = {p.name for p in (ROOT / "src" / "rat").glob("*.py")} - {"__init__.py", "__main__.py"}
    assert listed == spine
    packages = {p.parent.name for p in (ROOT / "src" / "rat").glob("*/__init__.py")}
    assert set(re.findall(r"^- `(\w+)/`: ", layout, re.M)) == packages, "one line per package"


def test_commands_say_python3_and_put_rat_on_the_path_first() -> None:
    """A fresh clone has no `python` and no `rat` on PATH: the docs must not assume them."""
    for path in (README, GUIDE_INDEX):
        text = path.read_text()
        assert not PYTHON_COMMAND.search(text), f"{path.name}: say python3"
        commands = [
            (m.start(2), line)
            for m in FENCE.finditer(text)
            if m.group(1).split()[:1] in (["sh"], ["console"])
            for line in m.group(2).splitlines()
        ]
        first_rat = min(
            (at for at, line in commands if re.match(r"^(\w+\$ )?\(?(ulimit[^;]*; )?rat ", line)),
            default=None,
        )
        if first_rat is not None:
            assert ACTIVATE in text[:first_rat], f"{path.name}: say `{ACTIVATE}` before `rat`"
    # The chapters' `rat serve` commands rely on the guide's index for this.
    assert ACTIVATE in GUIDE_INDEX.read_text()


def test_readme_sample_log_is_what_rat_prints(rat_server: Callable[..., ServerProcess]) -> None:
    """The netcat chat of the README, then Ctrl-C: the log shown is the log rat writes."""
    m = re.search(r"```text\n(.*?)\n```", section("A chat with netcat"), re.S)
    assert m, "the netcat section shows no log"
    shown = tuple(m.group(1).splitlines())
    server = rat_server()
    people = [server.connect() for _ in range(3)]
    time.sleep(0.2)
    said = [b"hi from alice\n", b"bob here\n", b"carol says hello\n"]
    for speaker, line in enumerate(said):
        people[speaker].sendall(line)
        for listener, sock in enumerate(people):
            if listener != speaker:
                assert recv_lines(sock, 1) == [line]
    server.signal(signal.SIGINT)
    assert server.wait() == 0
    for sock in people:
        sock.close()
    assert trace_matches(shown, server.stderr), f"README log\n{m.group(1)}\nrat\n{server.stderr}"

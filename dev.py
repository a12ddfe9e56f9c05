#!/usr/bin/env python3
"""Set up and run rat from a fresh checkout with nothing but python3.

    python3 dev.py serve [rat serve options]   # server on 127.0.0.1:8080
    python3 dev.py test  [pytest options]      # lint, format check, types, all tests
    python3 dev.py bench [rat bench options]   # load generator (installs the bench extra)

Each creates a virtual environment in .venv on first use and installs rat into
it (editable), with the test tools for `test` and uvloop and matplotlib for
`bench`; later runs reuse it, and reinstall when pyproject.toml changes.  After
the first run rat itself is .venv/bin/rat (or `source .venv/bin/activate` once,
then plain `rat`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path
from typing import NoReturn

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")

# What each command installs, as said in its progress line (first run, 2 cores).
WHAT = {
    "": "rat (first run: a few seconds)",
    "test": "rat and the test tools (first run: about a minute)",
    "bench": "rat and the bench tools, uvloop and matplotlib (first run: under a minute)",
}

# The steps of `dev.py test`, each announced by one line before it runs.
STEPS = [
    ("ruff (lint)", ["ruff", "check", "."]),
    ("format check", ["ruff", "format", "--check", "."]),
    ("mypy --strict", ["mypy"]),
    ("pytest", ["pytest"]),
]


class Fail(Exception):
    """A failure already explained to the user: main prints the message, no traceback."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def say(message: str) -> None:
    """A progress line on stderr (stdout stays the tools' own, e.g. `rat bench --json`)."""
    print(f"dev.py: {message}", file=sys.stderr, flush=True)


def venv_problem() -> str | None:
    """Why .venv cannot be used as it is, or None if its python and pip work."""
    python = BIN / "python"
    if not python.exists():
        return "it has no python"
    try:
        done = subprocess.run(
            [str(python), "-m", "pip", "--version"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=120,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"its python does not run ({err})"
    if done.returncode != 0:
        return "its python has no working pip"
    return None


def venv_package() -> str:
    return f"python{sys.version_info.major}.{sys.version_info.minor}-venv"


def remove_venv() -> None:
    try:
        if VENV.is_symlink() or VENV.is_file():
            VENV.unlink()
        elif VENV.exists():
            shutil.rmtree(VENV)
    except OSError as err:
        raise Fail(f"cannot remove the broken {VENV}: {err}; remove it by hand") from None


def create_venv() -> None:
    """Make a fresh .venv with pip, or fail with one line saying what to install."""
    say(f"creating {VENV.name} ...")
    # Debian's venv prints its own many-line advice and calls sys.exit(1) when
    # python3-venv is missing; capture that and say it in one line instead.
    chatter = io.StringIO()
    try:
        with contextlib.redirect_stdout(chatter):
            venv.create(VENV, with_pip=True)
    except (SystemExit, subprocess.CalledProcessError):
        remove_venv()
        raise Fail(
            f"cannot create {VENV.name}: this python3 ({sys.version.split()[0]}) has no working"
            f" venv/ensurepip; on Debian/Ubuntu install it with: apt install {venv_package()}"
            " (the python3-venv package), then run dev.py again"
        ) from None
    except OSError as err:
        remove_venv()
        raise Fail(f"cannot create {VENV.name}: {err}") from None
    problem = venv_problem()
    if problem:
        remove_venv()
        raise Fail(
            f"created {VENV.name} but {problem}; on Debian/Ubuntu install: apt install"
            f" {venv_package()} (the python3-venv package), then run dev.py again"
        )


def pyproject_hash() -> str:
    return hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()


def ensure_venv(extras: str) -> None:
    """Make .venv usable and install rat (with the given extras) unless already done."""
    # Reinstall when pyproject.toml's content changes (new dependencies, entry
    # points); a fresh clone's new mtimes alone do not matter.
    stamp = VENV / f".installed-{extras or 'base'}"
    wanted = pyproject_hash()
    installed = stamp.exists() and stamp.read_text().strip() == wanted
    if installed and (BIN / "python").exists():
        return  # pip worked when it wrote the stamp: skip the 0.7 s pip check
    if VENV.exists() or VENV.is_symlink():
        problem = venv_problem()
        if problem:
            say(f"{VENV.name} is broken ({problem}); recreating it ...")
            remove_venv()
            create_venv()
    else:
        create_venv()
    again = "pyproject.toml changed: re" if stamp.exists() else ""
    say(f"{again}installing {WHAT[extras]} ...")
    spec = f".[{extras}]" if extras else "."
    cmd = [str(BIN / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    code = subprocess.run([*cmd, "-e", spec], cwd=ROOT, check=False).returncode
    if code != 0:
        raise Fail(f"installing rat into {VENV.name} failed (pip exit status {code}; see above)")
    stamp.write_text(wanted + "\n")


def exec_rat(*args: str) -> NoReturn:
    rat = BIN / "rat"
    try:
        os.execv(rat, [str(rat), *args])
    except OSError as err:
        raise Fail(f"cannot run {rat}: {err}; remove {VENV.name} and run dev.py again") from None


def run_tests(pytest_args: list[str]) -> int:
    ensure_venv("test")
    for n, (label, step) in enumerate(STEPS, 1):
        cmd = [*step, *pytest_args] if label == "pytest" else step
        say(f"[{n}/{len(STEPS)}] {label}: {' '.join(cmd)}")
        code = subprocess.run([str(BIN / cmd[0]), *cmd[1:]], cwd=ROOT, check=False).returncode
        if code != 0:
            say(f"{label} failed (exit status {code})")
            return code
    return 0


def main(argv: list[str]) -> int:
    usage = (__doc__ or "").strip()
    if argv and argv[0] in {"-h", "--help", "help"}:
        print(usage)
        return 0
    if not argv or argv[0] not in {"serve", "test", "bench"}:
        print(usage, file=sys.stderr)
        return 2
    what, rest = argv[0], argv[1:]
    try:
        if what == "serve":
            ensure_venv("")
            exec_rat("serve", "--host", "127.0.0.1", "--port", "8080", *rest)
        elif what == "bench":
            ensure_venv("bench")
            exec_rat("bench", *rest)
        return run_tests(rest)
    except Fail as err:
        say(str(err))
        return err.code
    except KeyboardInterrupt:
        say("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

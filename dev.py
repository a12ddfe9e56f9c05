#!/usr/bin/env python3
"""Set up and run rat from a fresh checkout with nothing but python3.

    python3 dev.py serve [rat serve options]   # server on 127.0.0.1:8080
    python3 dev.py test  [pytest options]      # lint, types and the whole test suite

Both create a virtual environment in .venv on first use and install rat into
it (editable), with the test tools for `test`.  Later runs reuse it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")


def run(*cmd: str) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def ensure_venv(extras: str) -> None:
    """Create .venv and install rat (with the given extras) unless already done."""
    if not (BIN / "python").exists():
        try:
            venv.create(VENV, with_pip=True)
        except subprocess.CalledProcessError:
            sys.exit(
                "dev.py: python3 cannot create a virtual environment with pip;"
                " on Debian/Ubuntu install it with: apt install python3-venv"
            )
    # Reinstall when pyproject.toml changes (new dependencies, entry points).
    stamp = VENV / f".installed-{extras or 'base'}"
    wanted = str((ROOT / "pyproject.toml").stat().st_mtime_ns)
    if stamp.exists() and stamp.read_text() == wanted:
        return
    spec = f".[{extras}]" if extras else "."
    run(
        str(BIN / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-e", spec
    )
    stamp.write_text(wanted)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"serve", "test"}:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    what, rest = argv[0], argv[1:]
    if what == "serve":
        ensure_venv("")
        args = [str(BIN / "rat"), "serve", "--host", "127.0.0.1", "--port", "8080", *rest]
        os.execv(args[0], args)
    ensure_venv("test")
    try:
        run(str(BIN / "ruff"), "check", ".")
        run(str(BIN / "ruff"), "format", "--check", ".")
        run(str(BIN / "mypy"))
        run(str(BIN / "pytest"), *rest)
    except subprocess.CalledProcessError as err:
        return err.returncode or 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

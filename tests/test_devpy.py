"""dev.py and .ci/run, run for real against a throw-away checkout with fake tools.

No network and no real virtual environment: each test copies dev.py (or .ci/run)
into a temp directory and runs it as a subprocess.  A fake `venv` module on
PYTHONPATH stands in for the standard library's (it can act as Debian's venv
without python3-venv does), and the .venv it makes holds shell scripts for
python, rat, ruff, mypy and pytest that append what they were asked to a log.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Stands in for the stdlib venv module.  FAKE_VENV says how create() behaves:
# ok (a .venv whose python has pip), debian (what Debian's venv does without
# python3-venv: a half-made .venv, its advice on stdout, sys.exit(1)), or
# ensurepip-error (CalledProcessError, as upstream venv raises).
FAKE_VENV_MODULE = """\
import os, shutil, subprocess, sys
from pathlib import Path

def create(env_dir, with_pip=False, **kwargs):
    env_dir = Path(env_dir)
    with open(os.environ["FAKE_LOG"], "a") as log:
        log.write(f"venv.create {env_dir.name} with_pip={with_pip}\\n")
    mode = os.environ.get("FAKE_VENV", "ok")
    (env_dir / "bin").mkdir(parents=True, exist_ok=True)
    (env_dir / "pyvenv.cfg").write_text("home = /usr/bin\\n")
    python = env_dir / "bin" / "python"
    if mode == "ensurepip-error":
        raise subprocess.CalledProcessError(1, [str(python), "-m", "ensurepip"])
    shutil.copy(os.environ["FAKE_PYTHON_NOPIP" if mode == "debian" else "FAKE_PYTHON"], python)
    if mode == "debian":
        print("The virtual environment was not created successfully because ensurepip is not")
        print("available.  On Debian/Ubuntu systems, you need to install the python3-venv")
        print("package using the following command.")
        sys.exit(1)
"""

# .venv/bin/python with a working (fake) pip: `-m pip install` puts the tools
# in place; FAKE_PIP_INSTALL_RC makes it fail instead.
FAKE_PYTHON = """\
#!/bin/sh
echo "python $*" >> "$FAKE_LOG"
if [ "$1" = -m ] && [ "$2" = pip ]; then
    case "$3" in
        --version) echo "pip 99.0"; exit 0 ;;
        install)
            [ "${FAKE_PIP_INSTALL_RC:-0}" = 0 ] || exit "$FAKE_PIP_INSTALL_RC"
            for tool in rat ruff mypy pytest; do cp "$FAKE_TOOL" "$(dirname "$0")/$tool"; done
            exit 0 ;;
    esac
fi
exit 1
"""

# The python of a half-made .venv (Debian without python3-venv): no pip.
FAKE_PYTHON_NOPIP = """\
#!/bin/sh
echo "python-nopip $*" >> "$FAKE_LOG"
echo "/work/.venv/bin/python: No module named pip" >&2
exit 1
"""

# rat, ruff, mypy, pytest: log the call; FAKE_<TOOL>_RC sets the exit status;
# FAKE_PYTEST_SIGINT makes pytest send SIGINT to its parent (Ctrl-C).
FAKE_TOOL = """\
#!/bin/sh
name=$(basename "$0")
echo "$name $*" >> "$FAKE_LOG"
if [ "$name" = pytest ] && [ -n "${FAKE_PYTEST_SIGINT:-}" ]; then kill -INT "$PPID"; sleep 5; fi
eval "rc=\\${FAKE_$(echo "$name" | tr a-z A-Z)_RC:-0}"
exit "$rc"
"""


def write_script(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Checkout:
    """A temp directory holding a copy of dev.py, a pyproject.toml and the fakes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.venv = root / ".venv"
        self.pyproject = root / "pyproject.toml"
        shutil.copy(ROOT / "dev.py", root / "dev.py")
        self.pyproject.write_text('[project]\nname = "rat"\n')
        fakes = root / "fakes"
        fakes.mkdir()
        (fakes / "venv.py").write_text(FAKE_VENV_MODULE)
        self.env = {
            **os.environ,
            "PYTHONPATH": str(fakes),
            "FAKE_LOG": str(root / "log"),
            "FAKE_PYTHON": str(write_script(fakes / "python", FAKE_PYTHON)),
            "FAKE_PYTHON_NOPIP": str(write_script(fakes / "python-nopip", FAKE_PYTHON_NOPIP)),
            "FAKE_TOOL": str(write_script(fakes / "tool", FAKE_TOOL)),
        }
        self.env.pop("VIRTUAL_ENV", None)

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(self.root / "dev.py"), *args],
            cwd=self.root,
            env={**self.env, **env},
            # Ctrl-C as in a terminal, even when this suite itself runs in the
            # background (`cmd &` in a script starts it with SIGINT ignored,
            # and an ignored signal stays ignored across exec).
            preexec_fn=_default_sigint,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def log(self) -> list[str]:
        path = self.root / "log"
        return path.read_text().splitlines() if path.exists() else []

    def installs(self) -> list[str]:
        return [line for line in self.log() if line.startswith("python -m pip install")]


@pytest.fixture
def checkout(tmp_path: Path) -> Checkout:
    return Checkout(tmp_path)


def no_traceback(done: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in done.stdout + done.stderr, done.stdout + done.stderr


@pytest.mark.parametrize("failure", ["debian", "ensurepip-error"])
def test_venv_creation_failure_says_what_to_install_in_one_line(
    checkout: Checkout, failure: str
) -> None:
    done = checkout.run("serve", FAKE_VENV=failure)
    assert done.returncode != 0
    no_traceback(done)
    assert done.stdout == ""  # Debian's own many-line advice is not shown
    lines = done.stderr.splitlines()
    assert lines[0] == "dev.py: creating .venv ..."
    assert len(lines) == 2, done.stderr
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert f"apt install python{version}-venv" in lines[1]
    assert "python3-venv" in lines[1]
    assert not checkout.venv.exists()  # the half-made .venv is gone
    assert not checkout.installs()


def test_half_made_venv_without_pip_is_recreated(checkout: Checkout) -> None:
    # What Debian's venv leaves behind without python3-venv: python but no pip.
    (checkout.venv / "bin").mkdir(parents=True)
    shutil.copy(checkout.env["FAKE_PYTHON_NOPIP"], checkout.venv / "bin" / "python")
    done = checkout.run("serve", "--port", "9000")
    assert done.returncode == 0, done.stderr
    no_traceback(done)
    assert "dev.py: .venv is broken (its python has no working pip); recreating it ..." in (
        done.stderr.splitlines()
    )
    assert "venv.create .venv with_pip=True" in checkout.log()
    assert checkout.installs() == ["python -m pip install -q --disable-pip-version-check -e ."]
    assert checkout.log()[-1] == "rat serve --host 127.0.0.1 --port 8080 --port 9000"


def test_venv_without_python_is_recreated(checkout: Checkout) -> None:
    # Regression guard: a .venv whose python is gone (and whose stamp says all
    # is installed) is made anew rather than trusted.
    checkout.venv.mkdir()
    (checkout.venv / ".installed-base").write_text("stale\n")
    done = checkout.run("serve")
    assert done.returncode == 0, done.stderr
    assert "dev.py: .venv is broken (it has no python); recreating it ..." in done.stderr
    assert len(checkout.installs()) == 1
    assert checkout.log()[-1].startswith("rat serve")


def test_failed_install_is_one_line_not_a_traceback(checkout: Checkout) -> None:
    done = checkout.run("serve", FAKE_PIP_INSTALL_RC="1")
    assert done.returncode == 1
    no_traceback(done)
    assert done.stderr.splitlines()[-1] == (
        "dev.py: installing rat into .venv failed (pip exit status 1; see above)"
    )
    assert not (checkout.venv / ".installed-base").exists()


def test_first_test_run_prints_progress_before_each_step(checkout: Checkout) -> None:
    done = checkout.run("test", "-k", "framing")
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        "dev.py: creating .venv ...",
        "dev.py: installing rat and the test tools (first run: about a minute) ...",
        "dev.py: [1/4] ruff (lint): ruff check .",
        "dev.py: [2/4] format check: ruff format --check .",
        "dev.py: [3/4] mypy --strict: mypy",
        "dev.py: [4/4] pytest: pytest -k framing",
    ]
    assert checkout.log()[-4:] == [
        "ruff check .",
        "ruff format --check .",
        "mypy ",
        "pytest -k framing",
    ]
    # A second run has nothing to set up and says only the steps.
    again = checkout.run("test")
    assert again.stderr.splitlines()[0] == "dev.py: [1/4] ruff (lint): ruff check ."


def test_failing_step_stops_the_run_with_its_status(checkout: Checkout) -> None:
    done = checkout.run("test", FAKE_MYPY_RC="3")
    assert done.returncode == 3
    assert done.stderr.splitlines()[-1] == "dev.py: mypy --strict failed (exit status 3)"
    assert not any(line.startswith("pytest") for line in checkout.log())


def test_interrupt_exits_130_without_a_traceback(checkout: Checkout) -> None:
    done = checkout.run("test", FAKE_PYTEST_SIGINT="1")
    assert done.returncode == 130
    no_traceback(done)
    assert done.stderr.splitlines()[-1] == "dev.py: interrupted"


def test_bench_installs_the_bench_extra_and_runs_rat_bench(checkout: Checkout) -> None:
    done = checkout.run("bench", "chat", "--clients", "3", "--json")
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""  # progress goes to stderr: `--json` output stays clean
    assert "dev.py: installing rat and the bench tools" in done.stderr
    assert checkout.installs() == [
        "python -m pip install -q --disable-pip-version-check -e .[bench]"
    ]
    assert checkout.log()[-1] == "rat bench chat --clients 3 --json"


def test_usage_lists_all_three_commands_and_where_rat_is() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "dev.py")], capture_output=True, text=True, check=False
    )
    assert done.returncode == 2
    for text in (
        "python3 dev.py serve",
        "python3 dev.py test",
        "python3 dev.py bench",
        ".venv/bin/rat",
        "source .venv/bin/activate",
    ):
        assert text in done.stderr
    helped = subprocess.run(
        [sys.executable, str(ROOT / "dev.py"), "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert helped.returncode == 0
    assert helped.stdout.strip() == done.stderr.strip()


def test_reinstall_follows_pyproject_content_not_its_mtime(checkout: Checkout) -> None:
    assert checkout.run("serve").returncode == 0
    assert checkout.run("serve").returncode == 0
    assert len(checkout.installs()) == 1  # the second run reused .venv
    # ... without the pip check: pip worked when the stamp was written.
    assert checkout.log().count("python -m pip --version") == 1
    # A fresh clone: same content, new mtime.  Nothing to reinstall.
    st = checkout.pyproject.stat()
    os.utime(checkout.pyproject, ns=(st.st_atime_ns, st.st_mtime_ns + 10**10))
    assert checkout.run("serve").returncode == 0
    assert len(checkout.installs()) == 1
    # An edit, even one that keeps the mtime: reinstall.
    st = checkout.pyproject.stat()
    checkout.pyproject.write_text('[project]\nname = "rat"\ndependencies = ["x"]\n')
    os.utime(checkout.pyproject, ns=(st.st_atime_ns, st.st_mtime_ns))
    done = checkout.run("serve")
    assert done.returncode == 0
    assert "dev.py: pyproject.toml changed: reinstalling rat" in done.stderr
    assert len(checkout.installs()) == 2


# --- .ci/run ------------------------------------------------------------------

# apt-get: logs its arguments; `install` puts a fake command for each package
# (all three packages' commands are named as the package) on PATH.
FAKE_APT_GET = """\
#!/bin/sh
echo "apt-get $*" >> "$FAKE_LOG"
[ "${FAKE_APT_RC:-0}" = 0 ] || { echo "E: Unable to locate package" >&2; exit "$FAKE_APT_RC"; }
installing=
for arg in "$@"; do
    case "$arg" in
        install) installing=1 ;;
        -*) ;;
        *) if [ -n "$installing" ]; then cp "$FAKE_CMD" "$(dirname "$0")/$arg"; fi ;;
    esac
done
"""

FAKE_CMD = """\
#!/bin/sh
echo "$(basename "$0") $*" >> "$FAKE_LOG"
"""


class CiCheckout:
    """A temp copy of .ci/run whose PATH holds only fakes and a few coreutils."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / ".ci").mkdir()
        shutil.copy(ROOT / ".ci" / "run", root / ".ci" / "run")
        self.bin = root / "bin"
        self.bin.mkdir()
        for tool in ("basename", "cp", "dirname", "env", "rm", "tail"):
            (self.bin / tool).symlink_to(shutil.which(tool) or f"/usr/bin/{tool}")
        # sudo, used only when not root: runs its command as it is.
        write_script(self.bin / "sudo", '#!/bin/sh\nexec "$@"\n')
        write_script(self.bin / "apt-get", FAKE_APT_GET)
        self.cmd = write_script(root / "fake-cmd", FAKE_CMD)
        shutil.copy(self.cmd, self.bin / "python3")  # logs `python3 dev.py test`

    def have(self, *commands: str) -> None:
        for command in commands:
            shutil.copy(self.cmd, self.bin / command)

    def run(self, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["/bin/bash", str(self.root / ".ci" / "run")],
            env={
                "PATH": str(self.bin),
                "FAKE_LOG": str(self.root / "log"),
                "FAKE_CMD": str(self.cmd),
                "TMPDIR": str(self.root),
                **env,
            },
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def log(self) -> list[str]:
        path = self.root / "log"
        return path.read_text().splitlines() if path.exists() else []


def test_ci_installs_only_missing_debian_packages_with_one_update(tmp_path: Path) -> None:
    ci = CiCheckout(tmp_path)
    ci.have("openssl")
    done = ci.run()
    assert done.returncode == 0, done.stderr
    apt = [line for line in ci.log() if line.startswith("apt-get")]
    assert len(apt) == 2, apt
    assert apt[0].endswith(" update -qq")
    assert apt[1].endswith(" install -y -qq --no-install-recommends redis-server chromium")
    assert ".ci/run: installed redis-server chromium" in done.stdout.splitlines()
    assert ci.log()[-2:] == ["python3 --version", "python3 dev.py test"]


def test_ci_installs_nothing_when_all_is_present(tmp_path: Path) -> None:
    ci = CiCheckout(tmp_path)
    ci.have("redis-server", "chromium", "openssl")
    done = ci.run()
    assert done.returncode == 0, done.stderr
    assert not any(line.startswith("apt-get") for line in ci.log())
    assert ci.log()[-1] == "python3 dev.py test"


def test_ci_stops_with_apt_output_when_install_fails(tmp_path: Path) -> None:
    ci = CiCheckout(tmp_path)
    done = ci.run(FAKE_APT_RC="100")
    assert done.returncode == 1
    assert "E: Unable to locate package" in done.stderr
    assert "apt-get failed installing redis-server chromium openssl" in done.stderr
    assert not any(line.startswith("python3") for line in ci.log())

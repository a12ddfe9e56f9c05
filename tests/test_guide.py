"""The guide stays true to the code it teaches from.

`docs/guide/` teaches epoll with rat's own code.  These tests keep it honest:

- References.  Every inline code span that names rat's code resolves:
  `src/rat/server.py:Server._accept` (a file, and a qualified name found in it
  with `ast`: a class, function, method, constant or `self.` attribute),
  `rat.poller.EpollPoller` (the same, through the module's file), plain paths
  such as `tests/test_framing.py`, and standard-library names the guide leans
  on (`select.EPOLLET`, `signal.set_wakeup_fd`, ...), which are imported.
- Excerpts.  A fenced block whose info string is `python excerpt FILE[:NAME]`
  quotes that code: its lines, stripped of indentation, appear in NAME's source
  consecutively and in order; a line `...` marks an elision.
- Exercises.  A fenced block `sh exercise [stopped|sigint]` is what the reader
  pastes into a shell: `python3 - <<'EOF'`, the Python code, `EOF` (a
  heredoc, never the interactive prompt).  It runs as-is, through `/bin/sh`
  with `python3` on PATH being this interpreter, against a fresh `rat serve`
  started with the flags of the chapter's latest `rat serve` command (in a
  `sh` block; `ulimit -n N` there becomes the child's descriptor limit), with
  the port in `RAT_PORT`; a `--web PORT` or `--admin PORT` there becomes an
  ephemeral port too, passed as `RAT_WEB_PORT` or `RAT_ADMIN_PORT`.  A `sh
  setup` block earlier in the chapter is a command the reader runs once where
  they run the exercises (making a certificate): each one runs, in order, in
  the exercise's own directory before the server starts; the exercise runs
  there too, and the server's file arguments (`--tls-cert cert.pem`) are
  found there.  The next fenced block, `text expected`, is exactly what it
  prints.  If the block after that is `text trace`, those lines appear
  in the server's stderr, consecutively, except where a line `...` allows a
  gap.  Timestamps are ignored; fd numbers and ports may differ from the
  guide's but must map one to one; `...` inside a line matches any text, and
  `descriptor limit N` and `pid N` any number.
  `stopped`: the server is stopped (SIGSTOP, the reader's Ctrl-Z) while the
  exercise starts and continued a second later (`fg`).  `sigint`: when the
  exercise prints a line asking for Ctrl-C, the server gets SIGINT.
  Each exercise also runs once on `--backend select` and must print the same.
"""

from __future__ import annotations

import ast
import importlib
import os
import re
import resource
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import ServerProcess

RatServer = Callable[..., ServerProcess]

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "guide"
CHAPTERS = sorted(GUIDE.glob("[0-9][0-9]-*.md"))
GUIDE_FILES = [GUIDE / "README.md", *CHAPTERS]

FENCE = re.compile(r"^```([^`\n]*)\n(.*?)^```[ \t]*$", re.M | re.S)
CODE_SPAN = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
FILE_REF = re.compile(r"^((?:src|tests|docs|scripts|bench)/[\w./-]+)(?::([A-Za-z_][\w.]*))?$")
MODULE_REF = re.compile(r"^(rat(?:\.[A-Za-z_]\w*)+)(?:\(\))?$")
STDLIB_MODULES = ("errno", "os", "resource", "select", "selectors", "signal", "socket")
STDLIB_REF = re.compile(rf"^((?:{'|'.join(STDLIB_MODULES)})(?:\.[A-Za-z_]\w*)+)(?:\(\))?$")
SERVE_COMMAND = re.compile(r"(?:ulimit -n (\d+)\s*;\s*)?\brat serve\b([^\n|)]*)")
# Ports of the other listeners a chapter's `rat serve` may open, and the
# environment variable that tells the exercise where each one ended up.
EXTRA_PORTS = {"--web": ("web", "RAT_WEB_PORT"), "--admin": ("admin", "RAT_ADMIN_PORT")}
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")
# Parts of a trace line that differ from run to run.
VARIABLE = re.compile(
    r"(?P<fd>(?<=fd=)\d+|(?<=\(fd )\d+)"
    r"|(?P<port>(?<=127\.0\.0\.1:)\d+)"
    r"|(?P<any>\.\.\.|(?<=descriptor limit )\d+|(?<=pid )\d+)"
)
GAP = "..."
# An exercise is a heredoc the reader pastes into a shell.
HEREDOC_START = "python3 - <<'EOF'"
HEREDOC_END = "EOF"
# `python ...` as a command (a fresh Debian has only python3); fence info lines excepted.
PYTHON_COMMAND = re.compile(r"^(?!```).*?(?<![\w/.-])python (?=\S)", re.M)


# ------------------------------------------------------------- parsing


@dataclass(frozen=True)
class Block:
    """One fenced code block of a guide file."""

    path: Path
    line: int
    info: tuple[str, ...]
    body: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def fenced_blocks(path: Path) -> list[Block]:
    text = path.read_text()
    return [
        Block(path, text.count("\n", 0, m.start()) + 1, tuple(m.group(1).split()), m.group(2))
        for m in FENCE.finditer(text)
    ]


def prose(path: Path) -> str:
    """The file's text with its fenced blocks blanked out (line numbers kept)."""
    return FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), path.read_text())


def code_spans(path: Path) -> Iterator[tuple[int, str]]:
    text = prose(path)
    for m in CODE_SPAN.finditer(text):
        yield text.count("\n", 0, m.start()) + 1, m.group(1)


@dataclass(frozen=True)
class Exercise:
    """A scripted `python exercise` block and what the guide says it does."""

    block: Block
    flags: tuple[str, ...]
    nofile: int | None
    expected: str
    trace: tuple[str, ...]
    setup: tuple[str, ...] = ()

    @property
    def options(self) -> tuple[str, ...]:
        return self.block.info[2:]

    @property
    def id(self) -> str:
        return f"{self.block.path.stem}:{self.block.line}"


def serve_command(line: str) -> tuple[tuple[str, ...], int | None] | None:
    """Flags (minus --host/--port, which the fixture sets) and ulimit of a command line."""
    m = SERVE_COMMAND.search(line)
    if m is None:
        return None
    words = [w for w in shlex.split(m.group(2)) if not w.startswith("2>")]
    flags: list[str] = []
    skip = False
    for word in words:
        if skip:
            skip = False
        elif word in ("--host", "--port"):
            skip = True
        elif flags and flags[-1] in EXTRA_PORTS:
            host, colon, _ = word.rpartition(":")
            flags.append(f"{host}{colon}0")  # the same listener, on an ephemeral port
        elif not word.startswith(("--host=", "--port=")):
            flags.append(word)
    return tuple(flags), int(m.group(1)) if m.group(1) else None


def exercises(path: Path) -> list[Exercise]:
    found: list[Exercise] = []
    blocks = fenced_blocks(path)
    command: tuple[tuple[str, ...], int | None] | None = None
    setup: list[str] = []
    for i, block in enumerate(blocks):
        if block.info == ("sh", "setup"):
            setup.append(block.body)
        if block.info[:2] != ("sh", "exercise"):
            if block.info[:1] in (("sh",), ("console",)):
                for line in block.body.splitlines():
                    command = serve_command(line) or command
            continue
        assert command is not None, f"{block.where}: no `rat serve` command before the exercise"
        lines = block.body.splitlines()
        assert len(lines) > 2 and lines[0] == HEREDOC_START and lines[-1] == HEREDOC_END, (
            f"{block.where}: an exercise is `{HEREDOC_START}`, the code, then `{HEREDOC_END}`"
        )
        following = blocks[i + 1 : i + 3]
        assert following and following[0].info == ("text", "expected"), (
            f"{block.where}: an exercise must be followed by a `text expected` block"
        )
        trace: tuple[str, ...] = ()
        if len(following) > 1 and following[1].info == ("text", "trace"):
            trace = tuple(following[1].body.splitlines())
        found.append(
            Exercise(block, command[0], command[1], following[0].body, trace, tuple(setup))
        )
    return found


ALL_EXERCISES = [ex for path in CHAPTERS for ex in exercises(path)]


# ---------------------------------------------------------- resolving


def module_file(dotted: str) -> tuple[Path, str] | None:
    """Split `rat.a.B.c` into the file of the longest module prefix and the rest."""
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        base = ROOT / "src" / Path(*parts[:n])
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate, ".".join(parts[n:])
    return None


def _self_attributes(cls: ast.ClassDef) -> set[str]:
    """Names assigned as `self.NAME` anywhere in the class's methods."""
    return {
        node.attr
        for node in ast.walk(cls)
        if isinstance(node, ast.Attribute)
        and isinstance(node.ctx, ast.Store)
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
    }


def _member(body: list[ast.stmt], name: str) -> ast.stmt | None:
    for node in body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            if node.name == name:
                return node
        elif isinstance(node, ast.Assign):
            if any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
                return node
        elif (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and node.target.id == name
        ):
            return node
    return None


def find_definition(path: Path, qualname: str) -> ast.AST | None:
    """The node `qualname` names in `path` (the module itself for "")."""
    tree = ast.parse(path.read_text())
    node: ast.AST = tree
    for part in qualname.split(".") if qualname else []:
        body = node.body if isinstance(node, ast.Module | ast.ClassDef) else []
        found = _member(body, part)
        if found is None:
            if isinstance(node, ast.ClassDef) and part in _self_attributes(node):
                return node  # an instance attribute: the class defines it
            return None
        node = found
    return node


def resolve(reference: str) -> str | None:
    """None if `reference` resolves (or is not a reference); else why not."""
    if m := FILE_REF.match(reference):
        path = ROOT / m.group(1)
        if not path.exists():
            return f"no such file {m.group(1)}"
        if m.group(2) and find_definition(path, m.group(2)) is None:
            return f"{m.group(1)} defines no {m.group(2)}"
        return None
    if m := MODULE_REF.match(reference):
        located = module_file(m.group(1))
        if located is None:
            return f"no module for {m.group(1)}"
        path, qualname = located
        if find_definition(path, qualname) is None:
            return f"{path.relative_to(ROOT)} defines no {qualname}"
        return None
    if m := STDLIB_REF.match(reference):
        first, *rest = m.group(1).split(".")
        obj: object = importlib.import_module(first)
        for name in rest:
            if not hasattr(obj, name):
                return f"the standard library has no {m.group(1)}"
            obj = getattr(obj, name)
        return None
    return None


def rat_names() -> tuple[set[str], set[str]]:
    """rat's class names, and its private function and method names."""
    classes: set[str] = set()
    private: set[str] = set()
    for path in (ROOT / "src" / "rat").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                classes.add(node.name)
            elif (
                isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                and node.name.startswith("_")
                and not node.name.endswith("__")
            ):
                private.add(node.name)
    return classes, private


def source_lines(path: Path, qualname: str) -> list[str]:
    """Stripped, non-blank lines of `qualname`'s source in `path`."""
    node = find_definition(path, qualname)
    assert node is not None
    lines = path.read_text().splitlines()
    if isinstance(node, ast.stmt):
        lines = lines[node.lineno - 1 : node.end_lineno]
    return [line.strip() for line in lines if line.strip()]


# ------------------------------------------------------- trace matching

Binding = dict[tuple[str, str], str]


def compile_line(expected: str) -> tuple[re.Pattern[str], list[tuple[str, str]]]:
    """A regex for one expected trace line, and the (kind, value) of each group."""
    expected = TIMESTAMP.sub("", expected)
    pattern: list[str] = []
    groups: list[tuple[str, str]] = []
    pos = 0
    for m in VARIABLE.finditer(expected):
        pattern.append(re.escape(expected[pos : m.start()]))
        if m.lastgroup == "any":
            pattern.append(".*?" if m.group() == GAP else r"\d+")
        else:
            pattern.append(r"(\d+)")
            groups.append((str(m.lastgroup), m.group()))
        pos = m.end()
    pattern.append(re.escape(expected[pos:]))
    return re.compile("".join(pattern) + r"\Z"), groups


def _bind(binding: Binding, kind: str, expected: str, actual: str) -> bool:
    """Record expected -> actual (one to one per kind); False on a clash."""
    forward, backward = (kind, "guide:" + expected), (kind, "real:" + actual)
    if binding.get(forward, actual) != actual or binding.get(backward, expected) != expected:
        return False
    binding[forward], binding[backward] = actual, expected
    return True


def _match_run(
    run: list[tuple[re.Pattern[str], list[tuple[str, str]]]],
    actual: list[str],
    pos: int,
    binding: Binding,
) -> Binding | None:
    binding = dict(binding)
    for offset, (regex, groups) in enumerate(run):
        m = regex.match(actual[pos + offset])
        if m is None:
            return None
        for (kind, value), got in zip(groups, m.groups(), strict=True):
            if not _bind(binding, kind, value, got):
                return None
    return binding


def trace_matches(expected: tuple[str, ...], stderr: str) -> bool:
    """Whether `expected` (runs of consecutive lines, split at '...') is in `stderr`."""
    runs: list[list[tuple[re.Pattern[str], list[tuple[str, str]]]]] = [[]]
    for line in expected:
        if line.strip() == GAP:
            runs.append([])
        else:
            runs[-1].append(compile_line(line))
    runs = [run for run in runs if run]
    actual = [TIMESTAMP.sub("", line) for line in stderr.splitlines()]

    def search(index: int, start: int, binding: Binding) -> bool:
        if index == len(runs):
            return True
        run = runs[index]
        for pos in range(start, len(actual) - len(run) + 1):
            bound = _match_run(run, actual, pos, binding)
            if bound is not None and search(index + 1, pos + len(run), bound):
                return True
        return False

    return search(0, 0, {})


# ------------------------------------------------------------- running


def _limit_nofile(limit: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return apply


def _leaking(limit: Callable[[], None] | None, leaked: int) -> Callable[[], None]:
    """`limit`, then `leaked` open descriptors the server inherits (as from a careless parent)."""

    def preexec() -> None:
        if limit is not None:
            limit()
        for _ in range(leaked):
            os.set_inheritable(os.open(os.devnull, os.O_RDONLY), True)

    return preexec


def start_server(
    rat_server: RatServer, exercise: Exercise, workdir: Path, *extra: str, leaked: int = 0
) -> ServerProcess:
    """Run the chapter's set-up commands in `workdir`, then the chapter's `rat serve`.

    `leaked`: the server starts with that many extra descriptors open.
    """
    for command in exercise.setup:
        done = subprocess.run(
            ["/bin/sh", "-c", command],
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, f"{exercise.id}: set-up failed:\n{command}\n{done.stderr}"
    # A file the reader names from their directory (`cert.pem`) is found in `workdir`.
    flags = [
        str(workdir / word) if not word.startswith("-") and (workdir / word).is_file() else word
        for word in exercise.flags
    ]
    preexec = _limit_nofile(exercise.nofile) if exercise.nofile else None
    if leaked:
        preexec = _leaking(preexec, leaked)
    return rat_server(*flags, *extra, preexec=preexec)


def extra_ports(server: ServerProcess) -> dict[str, str]:
    """RAT_WEB_PORT and RAT_ADMIN_PORT, for the listeners the `listening on` line names."""
    found = {}
    for kind, variable in EXTRA_PORTS.values():
        m = re.search(rf"\b{kind} \S+:(\d+)", server.listening)
        if m:
            found[variable] = m.group(1)
    return found


def run_exercise(exercise: Exercise, server: ServerProcess, workdir: Path) -> str:
    """Paste the exercise into a shell in `workdir`, as the reader does; return what it printed.

    `workdir` gets a `python3` that is this interpreter, first on PATH.
    """
    python3 = workdir / "python3"
    if not python3.exists():
        python3.symlink_to(sys.executable)
    path = os.pathsep.join([str(workdir), os.environ.get("PATH", "")])
    env = dict(os.environ, RAT_PORT=str(server.port), PYTHONUNBUFFERED="1", PATH=path)
    env.update(extra_ports(server))
    argv = ["/bin/sh", "-c", exercise.block.body]
    options = exercise.options
    if "stopped" in options:
        server.signal(signal.SIGSTOP)
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=workdir,
        )
        if "stopped" in options:
            time.sleep(1.0)
    finally:
        if "stopped" in options:
            server.signal(signal.SIGCONT)
    printed = ""
    if "sigint" in options:
        assert proc.stdout is not None
        while "Ctrl-C" not in printed:
            line = proc.stdout.readline()
            assert line, f"the exercise ended without asking for Ctrl-C: {printed!r}"
            printed += line
        server.signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"exercise hung; printed {printed + out!r}, stderr {err!r}") from None
    assert proc.returncode == 0, f"exercise failed:\n{err}"
    return printed + out


# --------------------------------------------------------------- tests


def test_the_guide_has_its_chapters() -> None:
    assert len(CHAPTERS) >= 7, [p.name for p in CHAPTERS]
    numbers = [int(p.name[:2]) for p in CHAPTERS]
    assert numbers == list(range(1, len(CHAPTERS) + 1)), "chapters are numbered 01, 02, ..."
    index = (GUIDE / "README.md").read_text()
    listed = re.findall(r"^\d+\. \[[^]]+\]\(([^)]+)\)", index, re.M)
    assert listed == [p.name for p in CHAPTERS], "the index lists every chapter, in order"
    readme = (ROOT / "README.md").read_text()
    assert "](docs/guide/README.md)" in readme


@pytest.mark.parametrize("path", GUIDE_FILES, ids=lambda p: p.stem)
def test_snippets_are_never_typed_into_the_interactive_prompt(path: Path) -> None:
    """`python3 -` in a terminal is the REPL, where a blank line inside a block is an error."""
    text = path.read_text()
    bare = [m.group(0) for m in re.finditer(r"python3? -(?![\w-])(?! <<'EOF')", text)]
    assert not bare, f"{path.name}: run snippets with {HEREDOC_START!r} or from a file: {bare}"
    assert not PYTHON_COMMAND.search(text), f"{path.name}: say python3, not python"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_each_chapter_names_rats_code_and_ends_with_an_exercise(chapter: Path) -> None:
    refs = [span for _, span in code_spans(chapter) if FILE_REF.match(span)]
    assert any(":" in ref for ref in refs), f"{chapter.name} names no function in rat"
    headings = re.findall(r"^## (.*)$", prose(chapter), re.M)
    assert headings and headings[-1].startswith("Try it"), f"{chapter.name}: last section"
    assert exercises(chapter), f"{chapter.name} has no scripted exercise"


@pytest.mark.parametrize("path", GUIDE_FILES, ids=lambda p: p.stem)
def test_every_reference_resolves(path: Path) -> None:
    problems = [
        f"{path.name}:{line}: `{span}`: {why}"
        for line, span in code_spans(path)
        if (why := resolve(span)) is not None
    ]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", GUIDE_FILES, ids=lambda p: p.stem)
def test_references_use_the_checked_syntax(path: Path) -> None:
    """`Server._flush` or `_flush` alone would escape the check above: spell them out."""
    classes, private = rat_names()
    short = [
        f"{path.name}:{line}: `{span}`"
        for line, span in code_spans(path)
        if (m := re.match(r"^(?:([A-Z]\w*)\.)?(\w+)(?:\(\))?$", span))
        and ((m.group(1) in classes) or (m.group(1) is None and m.group(2) in private))
    ]
    assert not short, "write these as `src/rat/FILE.py:NAME` or `rat.MODULE.NAME`:\n" + "\n".join(
        short
    )


@pytest.mark.parametrize("path", GUIDE_FILES, ids=lambda p: p.stem)
def test_every_link_resolves(path: Path) -> None:
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", prose(path)):
        if "://" not in target:
            assert (path.parent / target).exists(), f"{path.name}: broken link {target}"


@pytest.mark.parametrize("path", GUIDE_FILES, ids=lambda p: p.stem)
def test_every_excerpt_is_real_code(path: Path) -> None:
    for block in fenced_blocks(path):
        if block.info[:2] != ("python", "excerpt"):
            continue
        assert len(block.info) == 3, f"{block.where}: say which code the excerpt quotes"
        where, _, qualname = block.info[2].partition(":")
        assert resolve(block.info[2]) is None, f"{block.where}: {resolve(block.info[2])}"
        source = source_lines(ROOT / where, qualname)
        runs: list[list[str]] = [[]]
        for line in block.body.splitlines():
            if line.strip() == GAP:
                runs.append([])
            elif line.strip():
                runs[-1].append(line.strip())
        start = 0
        for run in (r for r in runs if r):
            at = next(
                (i for i in range(start, len(source)) if source[i : i + len(run)] == run), None
            )
            assert at is not None, f"{block.where}: not in {block.info[2]} (in order):\n{run}"
            start = at + len(run)


def test_the_guide_scripts_enough_exercises() -> None:
    assert len(ALL_EXERCISES) >= 7
    assert sum(1 for ex in ALL_EXERCISES if ex.trace) >= 5
    for ex in ALL_EXERCISES:
        assert not ex.trace or "--trace" in ex.flags, f"{ex.block.where}: trace without --trace"


@pytest.mark.parametrize("exercise", ALL_EXERCISES, ids=lambda ex: ex.id)
def test_exercise_does_what_the_guide_says(
    rat_server: RatServer, exercise: Exercise, tmp_path: Path
) -> None:
    server = start_server(rat_server, exercise, tmp_path)
    printed = run_exercise(exercise, server, tmp_path)
    assert printed == exercise.expected, (
        f"{exercise.block.where}: the exercise printed\n{printed}\nthe guide says\n"
        f"{exercise.expected}"
    )
    if not exercise.trace:
        return
    deadline = time.monotonic() + 10
    while not trace_matches(exercise.trace, server.stderr):
        if time.monotonic() > deadline:
            shown = "\n".join(exercise.trace)
            raise AssertionError(
                f"{exercise.block.where}: the server's stderr lacks the guide's trace\n"
                f"--- guide\n{shown}\n--- server\n{server.stderr}"
            )
        time.sleep(0.05)
    if "sigint" in exercise.options:
        assert server.wait() == 0


@pytest.mark.parametrize("exercise", ALL_EXERCISES, ids=lambda ex: ex.id)
def test_exercise_prints_the_same_on_the_select_backend(
    rat_server: RatServer, exercise: Exercise, tmp_path: Path
) -> None:
    """Chapter 7 says the portable backend behaves the same: hold it to that."""
    if any(flag.startswith("--backend") for flag in exercise.flags):
        pytest.skip("the guide chose the backend")
    server = start_server(rat_server, exercise, tmp_path, "--backend", "select")
    assert run_exercise(exercise, server, tmp_path) == exercise.expected


DESCRIPTOR_EXERCISES = [ex for ex in ALL_EXERCISES if ex.nofile]


@pytest.mark.parametrize("exercise", DESCRIPTOR_EXERCISES, ids=lambda ex: ex.id)
def test_descriptor_exercises_hold_with_inherited_descriptors(
    rat_server: RatServer, exercise: Exercise, tmp_path: Path
) -> None:
    """A reader's shell may hand rat a descriptor or two: the exercise finds its own numbers."""
    server = start_server(rat_server, exercise, tmp_path, leaked=2)
    assert run_exercise(exercise, server, tmp_path) == exercise.expected


def test_there_is_a_descriptor_exercise() -> None:
    assert DESCRIPTOR_EXERCISES  # chapter 7 runs rat out of descriptors


def test_trace_matching_abstracts_fds_and_ports() -> None:
    stderr = (
        "2026-01-01 00:00:00,000 INFO connect 127.0.0.1:5000 (fd 9, 1 clients)\n"
        "trace: register   fd=9 127.0.0.1:5000 interest=R\n"
        "trace: poll -> 1 event\n"
        "trace:   event    fd=9 127.0.0.1:5000 R\n"
    )
    guide = (
        "2020-02-02 02:02:02,222 INFO connect 127.0.0.1:41000 (fd 8, 1 clients)",
        "trace: register   fd=8 127.0.0.1:41000 interest=R",
    )
    assert trace_matches(guide, stderr)
    assert trace_matches((guide[0], GAP, "trace:   event    fd=8 ... R"), stderr)
    # consecutive unless '...' says otherwise
    assert not trace_matches((guide[0], "trace:   event    fd=8 127.0.0.1:41000 R"), stderr)
    # one fd in the guide is one fd in the server, and the other way round
    for clash in ("fd=7 127.0.0.1:41000", "fd=8 127.0.0.1:41001"):
        assert not trace_matches((guide[0], f"trace: register   {clash} interest=R"), stderr)

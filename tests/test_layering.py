"""Who may import whom: the layering rules of the spine, checked on the source.

The rules (see the common brief and docs/ARCHITECTURE):

1. The event core (`rat.loop`, `rat.poller`, `rat.timers`) knows file
   descriptors, timers and turns, never lines or clients: from `rat` it
   imports only itself (no framing, hub, connection, server, listener...).
2. Pure modules do no I/O: `framing`, `outbuf`, `hub`, `timers`, `config`,
   `layer`, and in every feature package (`rat/<pkg>/`) the modules named
   `session*`, `layer*` or `*protocol*` (and those listed in FEATURE_PURE),
   import none of `socket`, `select`, `selectors`, directly or through any
   `rat` module they import.
3. Nothing in `rat` imports `ratbench`, at module level or inside a function
   (`rat bench` loads it by name, with importlib, only when it runs).
4. Feature packages (the subpackages of `rat`: `rat.web`, `rat.chat`, ...)
   import the spine, never each other; the composition happens in `rat.cli`.

The checks walk every `.py` file under `src/rat` and `src/ratbench` with
`ast`, so new modules and packages are covered as they appear.  Imports under
`if TYPE_CHECKING:` run only in the type checker and count for rule 3 only.
`check_tree` is also run on small synthetic trees, so that each rule is shown
to catch what it is meant to catch.

A last test starts `rat serve` in a subprocess and lists `sys.modules` at
exit: the plain server loads neither the load generator nor any feature
package or protocol library when no feature flag is given.
"""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import SRC

EVENT_CORE = frozenset({"rat.loop", "rat.poller", "rat.timers"})
SPINE_PURE = frozenset(
    {"rat.framing", "rat.outbuf", "rat.hub", "rat.timers", "rat.config", "rat.layer"}
)
# Sans-IO modules of the feature packages whose names do not say so.
FEATURE_PURE = frozenset(
    {
        "rat.web.http",
        "rat.web.websocket",
        "rat.chat.text",
        "rat.cluster.message",
        "rat.cluster.resp",
        "rat.cluster.backoff",
        "rat.cluster.backplane",
    }
)
IO_MODULES = frozenset({"socket", "select", "selectors"})
# Libraries that only features need: the plain server must not load them.
FEATURE_LIBRARIES = ("h11", "wsproto", "ssl", "_ssl", "hiredis", "redis", "ratbench")


@dataclass
class Module:
    """One source file: its dotted name and what it imports."""

    name: str
    path: Path
    is_package: bool
    # (imported module, line, only under TYPE_CHECKING)
    imports: list[tuple[str, int, bool]] = field(default_factory=list)

    @property
    def package(self) -> str:
        return self.name if self.is_package else self.name.rpartition(".")[0]


def module_name(root: Path, path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(root).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts.pop()
    return ".".join(parts), is_package


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(module: Module, node: ast.ImportFrom) -> str:
    """The absolute module a `from ... import` names (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    base = module.package.split(".")
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def parse_module(root: Path, path: Path) -> Module:
    name, is_package = module_name(root, path)
    module = Module(name, path, is_package)
    tree = ast.parse(path.read_text(), filename=str(path))

    def visit(node: ast.AST, typing_only: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for statement in node.body:
                visit(statement, True)
            for statement in node.orelse:
                visit(statement, typing_only)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                module.imports.append((alias.name, node.lineno, typing_only))
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node)
            module.imports.append((target, node.lineno, typing_only))
            # `from rat import web` imports the module rat.web.
            for alias in node.names:
                module.imports.append((f"{target}.{alias.name}", node.lineno, typing_only))
        for child in ast.iter_child_nodes(node):
            visit(child, typing_only)

    visit(tree, False)
    return module


def load_tree(src: Path) -> dict[str, Module]:
    """Every module under `src/rat` and `src/ratbench`, by dotted name."""
    modules: dict[str, Module] = {}
    for top in ("rat", "ratbench"):
        for path in sorted((src / top).rglob("*.py")):
            module = parse_module(src, path)
            modules[module.name] = module
    return modules


def _top(name: str, depth: int) -> str:
    return ".".join(name.split(".")[:depth])


def feature_packages(modules: dict[str, Module]) -> set[str]:
    """`rat.web`, `rat.chat`, ...: the packages directly inside `rat`."""
    return {m.name for m in modules.values() if m.is_package and m.name.count(".") == 1}


def is_pure(module: Module, features: set[str]) -> bool:
    if module.name in SPINE_PURE or module.name in FEATURE_PURE:
        return True
    if _top(module.name, 2) not in features or module.is_package:
        return False
    last = module.name.rsplit(".", 1)[1]
    return last.startswith(("session", "layer")) or "protocol" in last


def rat_imports(module: Module, modules: dict[str, Module]) -> set[str]:
    """The `rat` modules `module` imports at run time (names that are modules)."""
    return {
        target
        for target, _, typing_only in module.imports
        if not typing_only and target in modules and target.startswith("rat")
    }


def check_tree(src: Path) -> list[str]:
    """Every layering violation in the tree under `src`, one message each."""
    modules = load_tree(src)
    features = feature_packages(modules)
    problems: list[str] = []

    def where(module: Module, line: int) -> str:
        return f"{module.path.relative_to(src)}:{line}"

    for module in modules.values():
        if not module.name.startswith("rat") or module.name.startswith("ratbench"):
            continue
        for target, line, typing_only in module.imports:
            # Rule 3: no ratbench in rat, whatever the context.
            if target == "ratbench" or target.startswith("ratbench."):
                problems.append(f"{where(module, line)}: {module.name} imports {target}")
            if typing_only:
                continue
            # Rule 1: the event core imports only the event core from rat.
            if (
                module.name in EVENT_CORE
                and target in modules
                and target.startswith("rat.")
                and target not in EVENT_CORE
            ):
                problems.append(f"{where(module, line)}: event core {module.name} imports {target}")
            # Rule 2: pure modules import no socket/select/selectors.
            if is_pure(module, features) and target.split(".")[0] in IO_MODULES:
                problems.append(f"{where(module, line)}: pure {module.name} imports {target}")
            # Rule 4: a feature package imports no other feature package.
            mine, theirs = _top(module.name, 2), _top(target, 2)
            if mine in features and theirs in features and mine != theirs:
                problems.append(f"{where(module, line)}: feature {mine} imports {target}")

    # Rule 2, through the imports: a pure module reaches no I/O module through `rat`.
    pure = {name for name, module in modules.items() if is_pure(module, features)}
    for name in sorted(pure):
        seen: set[str] = set()
        todo = [name]
        while todo:
            current = todo.pop()
            if current in seen:
                continue
            seen.add(current)
            module = modules[current]
            for target, line, typing_only in module.imports:
                if not typing_only and target.split(".")[0] in IO_MODULES and current != name:
                    problems.append(
                        f"{where(module, line)}: pure {name} imports {target} through {current}"
                    )
            todo.extend(rat_imports(module, modules))
    return sorted(set(problems))


# ------------------------------------------------------------------ the real tree


def test_the_source_tree_keeps_the_layering_rules() -> None:
    problems = check_tree(SRC)
    assert not problems, "layering violations:\n" + "\n".join(problems)


def test_the_walk_sees_the_spine() -> None:
    """The checks look at the real modules (a moved `src` would make them vacuous)."""
    modules = load_tree(SRC)
    assert modules.keys() >= EVENT_CORE | SPINE_PURE
    assert modules.keys() >= {"rat.server", "rat.connection", "rat.cli", "ratbench"}
    assert "rat.poller" in rat_imports(modules["rat.loop"], modules)
    assert "rat.connection" in rat_imports(modules["rat.server"], modules)


# ------------------------------------------------------- each rule, on synthetic trees


def make_tree(root: Path, files: dict[str, str]) -> Path:
    """A source tree with a minimal spine plus `files` (path -> source)."""
    base = {
        "rat/__init__.py": "",
        "rat/loop.py": "import socket\nfrom rat.poller import Poller\nfrom rat.timers import T\n",
        "rat/poller.py": "import select\n",
        "rat/timers.py": "import heapq\n",
        "rat/framing.py": "from rat.config import X\n",
        "rat/outbuf.py": "from collections import deque\n",
        "rat/hub.py": "",
        "rat/config.py": "",
        "rat/connection.py": "import socket\nfrom rat.hub import Room\n",
        "rat/server.py": "import socket\nfrom rat.connection import Conn\n",
        "rat/cli.py": "import importlib\nimportlib.import_module('ratbench')\n",
        "ratbench/__init__.py": "import socket\nfrom rat.argtypes import whole_number\n",
    }
    for rel, text in {**base, **files}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def test_a_clean_synthetic_tree_passes(tmp_path: Path) -> None:
    tree = make_tree(
        tmp_path,
        {
            "rat/web/__init__.py": "",
            "rat/web/layer.py": "from rat.hub import Turn\nimport ssl\n",
            "rat/web/conn.py": "import socket\nfrom rat.connection import Conn\n",
            "rat/chat/__init__.py": "",
            "rat/chat/session.py": "from rat.hub import Room\n",
            "rat/chat/history.py": "from . import session\n",
        },
    )
    assert check_tree(tree) == []


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"rat/loop.py": "from rat.hub import Room\n"}, "event core rat.loop imports rat.hub"),
        (
            {"rat/poller.py": "def f():\n    from rat import connection\n"},
            "event core rat.poller imports rat.connection",
        ),
        ({"rat/timers.py": "from .server import S\n"}, "event core rat.timers imports rat.server"),
        ({"rat/hub.py": "import socket\n"}, "pure rat.hub imports socket"),
        ({"rat/framing.py": "from selectors import X\n"}, "pure rat.framing imports selectors"),
        (
            {"rat/outbuf.py": "from rat.connection import Conn\n"},
            "pure rat.outbuf imports socket through rat.connection",
        ),
        (
            {"rat/chat/__init__.py": "", "rat/chat/session.py": "import select\n"},
            "pure rat.chat.session imports select",
        ),
        (
            {"rat/web/__init__.py": "", "rat/web/ws_protocol.py": "import socket\n"},
            "pure rat.web.ws_protocol imports socket",
        ),
        (
            {"rat/tls/__init__.py": "", "rat/tls/layer.py": "import socket as s\n"},
            "pure rat.tls.layer imports socket",
        ),
        ({"rat/server.py": "import ratbench.wire\n"}, "rat.server imports ratbench.wire"),
        (
            {"rat/cli.py": "def bench():\n    from ratbench import run\n"},
            "rat.cli imports ratbench",
        ),
        (
            {
                "rat/net.py": "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    import ratbench\n"
            },
            "rat.net imports ratbench",
        ),
        (
            {
                "rat/web/__init__.py": "",
                "rat/chat/__init__.py": "",
                "rat/web/page.py": "from rat.chat.session import Session\n",
            },
            "feature rat.web imports rat.chat",
        ),
        (
            {
                "rat/web/__init__.py": "",
                "rat/chat/__init__.py": "",
                "rat/chat/x.py": "from ..web import page\n",
            },
            "feature rat.chat imports rat.web",
        ),
        (
            {
                "rat/web/__init__.py": "",
                "rat/cluster/__init__.py": "",
                "rat/cluster/redis.py": "from rat import web\n",
            },
            "feature rat.cluster imports rat.web",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_each_rule_catches_its_violation(
    tmp_path: Path, files: dict[str, str], expected: str
) -> None:
    problems = check_tree(make_tree(tmp_path, files))
    assert any(expected in problem for problem in problems), problems


def test_type_checking_imports_do_not_count_as_run_time(tmp_path: Path) -> None:
    """`rat.connection` names `rat.server` for the type checker only: that is no cycle."""
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import rat.hub\n"
    tree = make_tree(tmp_path, {"rat/loop.py": source})
    assert check_tree(tree) == []


# ------------------------------------------------------------- what `rat serve` loads

# Run the server in-process in a child; at exit, write the loaded modules to argv[1].
SERVE_AND_LIST_MODULES = """
import atexit, json, sys
out = sys.argv[1]
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(sys.modules))))
import rat.cli
sys.exit(rat.cli.main(["serve", "--port", "0"]))
"""


def test_plain_serve_loads_no_bench_and_no_feature_code(tmp_path: Path) -> None:
    listing = tmp_path / "modules.json"
    env = dict(os.environ, PYTHONPATH=str(SRC), PYTHONUNBUFFERED="1")
    for name in list(env):
        if name.startswith("RAT_"):  # no feature switched on from the environment
            del env[name]
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE_AND_LIST_MODULES, str(listing)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 15
        line = b""
        while b"listening on" not in line:
            assert time.monotonic() < deadline, "no listening line"
            line = proc.stderr.readline()
            assert line, "rat serve exited before listening"
        proc.send_signal(signal.SIGTERM)
        rest = proc.stderr.read()
        assert proc.wait(15) == 0, rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
    loaded = set(json.loads(listing.read_text()))
    assert "rat.server" in loaded, "the listing does not come from a running server"
    features = feature_packages(load_tree(SRC))
    unwanted = sorted(
        name
        for name in loaded
        if name.split(".")[0] in FEATURE_LIBRARIES or _top(name, 2) in features
    )
    assert not unwanted, f"plain `rat serve` loaded {unwanted}"

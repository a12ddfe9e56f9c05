#!/usr/bin/env python3
"""Run every server through every scenario, side by side, in one run; write a report.

    python3 bench/compare.py                   # everything (see --help for how long)
    python3 bench/compare.py --quick           # a smoke test: 1 short repetition
    python3 bench/compare.py --servers rat,uvloop --scenarios sweep-even,fanout-100
    python3 bench/compare.py --rat-args 'rat-c1=--coalesce-ms 1'   # a rat variant
    python3 bench/compare.py --update-docs     # also rewrite docs/BENCHMARKS.md

Servers: rat, rat variants (`--rat-args NAME=FLAGS`: rat serve with those flags),
the asyncio peer, the same file under uvloop, the Node.js peer, Redis pub/sub
(`redis-server`, loopback only, no persistence) and the simplest correct
`selectors` server (`bench/peers/minimal_selectors.py`).  Before anything is
measured every server is started once; one that cannot start (a missing
program or module, or a rat flag this rat does not know) is skipped with a
message.  Each measurement gets a fresh server process pinned to one CPU and
`rat bench` pinned to another; repetitions interleave the servers, and the
report gives medians, with ratios against rat from the same run and, next to
every table, the `rat bench` command that reproduces it.

Scenarios (`--scenarios`): `sweep-even` (chat, 100 clients, 500 to 100,000
lines/s, every line at its own time), `sweep-ticks` (the same clients at 2,000
and 50,000 lines/s in 5 ms batches: the other arrival pattern), `fanout-100`
and `fanout-1000` (one publisher at the highest rate its window allows),
`idle-10k` (10,000 connections, then one broadcast) and `connect` (connection
churn while newcomers time joining).

The report goes to bench/results/compare-STAMP/ (git-ignored): report.md,
benchmarks.png (with matplotlib, the `bench` extra) and raw.json.  Only
`--update-docs` writes docs/BENCHMARKS.md (keeping its hand-written section
between the `notes` markers) and docs/benchmarks.png.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT / "bench" / "peers"
DOCS = ROOT / "docs"
RESULTS = ROOT / "bench" / "results"
NOTES_BEGIN = "<!-- notes:begin (kept by bench/compare.py) -->"
NOTES_RE = re.compile(r"<!-- notes:begin[^>]*-->(.*?)<!-- notes:end -->", re.S)
NOTES_END = "<!-- notes:end -->"
LISTENING = re.compile(r"listening on \S+?:(\d+)")
# the other listeners rat names on the same line: "..., web 127.0.0.1:8081, admin ..."
LISTENER = re.compile(r"\b(web|admin) \S+?:(\d+)")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
ALL_SERVERS = (
    "rat", "asyncio", "uvloop", "node", "redis", "selectors",
    "ws-websockets", "ws-websockets-uvloop", "ws-node", "tls-uvloop",
)  # fmt: skip
# the servers a scenario named on its own runs against when groups are named too
# (the WebSocket and TLS peers only run their groups' scenarios then)
CORE_SERVERS = ("rat", "asyncio", "uvloop", "node", "redis", "selectors")
DEFAULT_VARIANTS = ("rat-c0=--coalesce-ms 0",)  # rat without its default coalescing
# rat variants that need more than flags (a port from the log, a certificate, a
# cluster): only run when named (--servers, or a scenario group)
RAT_FEATURES = ("rat-chat", "rat-chat-c0", "rat-web", "rat-tls", "rat-admin", "rat-redis2")
RAT_ENV = {"PYTHONPATH": str(ROOT / "src")}
SWEEP_RATES = (500, 1000, 2000, 10000, 50000, 100000)
TICK_RATES = (2000, 50000, 100000)  # ticks: the generator can send 100,000 lines/s in batches
PEER_ORDER = ("uvloop", "asyncio", "node", "redis", "selectors")


# -- the servers -----------------------------------------------------------------


@dataclass
class ServerSpec:
    name: str
    proto: str
    label: str
    command: Callable[[int], list[str]]  # port -> argv (port 0: pick one and print it)
    env: dict[str, str] = field(default_factory=dict)
    fixed_port: bool = False  # True: we pick the port (the server does not print it)
    missing: str | None = None  # why it cannot run here
    flags: list[str] = field(default_factory=list)  # rat variants: the extra flags
    tls: bool = False  # the generator connects with --tls
    bench_args: list[str] = field(default_factory=list)  # more for the generator (--chat)
    port_from: str = ""  # "web": the generator goes to rat's web port (from its log line)
    nodes: int = 1  # a cluster: this many rat nodes on one redis-server (--redis)
    scrape: bool = False  # GET /metrics on rat's admin port every second during each run

    @property
    def generator_args(self) -> list[str]:
        """What `rat bench` needs besides the port to talk to this server."""
        proto = [] if self.proto == "line" else ["--proto", self.proto]
        return [*proto, *(["--tls"] if self.tls else []), *self.bench_args]


def node_ws_missing(node: str | None) -> str | None:
    """Why the Node.js `ws` peer cannot run; installs the `ws` package when it is missing."""
    if node is None:
        return "node is not installed"
    if (PEERS / "node_modules" / "ws").is_dir():
        return None
    npm = shutil.which("npm")
    if npm is None:
        return "the ws package is missing and there is no npm to install it"
    print("compare: npm install (the ws package, into bench/peers/node_modules)", file=sys.stderr)
    done = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--prefix", str(PEERS)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        return f"npm install failed: {done.stderr.strip()[-200:]}"
    return None


_TLS_FILES: list[str] = []
# One throwaway certificate for every TLS server (rat and the peer): the same key type,
# so the same handshake cost.
CERT_ARGS = [
    "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
    "-days", "1", "-subj", "/CN=localhost",
]  # fmt: skip


def tls_files() -> list[str] | str:
    """A throwaway self-signed certificate and key in a temp dir (or why there is none)."""
    if _TLS_FILES:
        return _TLS_FILES
    openssl = shutil.which("openssl")
    if openssl is None:
        return "no openssl command to make a certificate"
    folder = tempfile.mkdtemp(prefix="rat-compare-tls-")
    cert, key = f"{folder}/cert.pem", f"{folder}/key.pem"
    done = subprocess.run(
        [openssl, *CERT_ARGS, "-keyout", key, "-out", cert],
        capture_output=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        return "openssl could not make a certificate"
    _TLS_FILES.extend([cert, key])
    return _TLS_FILES


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def parse_variant(text: str) -> tuple[str, list[str]]:
    """`NAME=FLAGS` (a rat variant: rat serve with FLAGS) -> (name, flags)."""
    name, sep, flags = text.partition("=")
    name = name.strip()
    if not sep or not re.fullmatch(r"rat-[A-Za-z0-9_-]+", name):
        raise argparse.ArgumentTypeError(
            f"expected rat-NAME=FLAGS, for example 'rat-coalesce=--coalesce-ms 1': {text!r}"
        )
    return name, shlex.split(flags)


def rat_serve_flags(python: str) -> set[str] | str:
    """The options `rat serve --help` lists (or why it could not be asked)."""
    try:
        done = subprocess.run(
            [python, "-m", "rat", "serve", "--help"],
            env={**os.environ, **RAT_ENV},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"rat serve --help failed: {err}"
    if done.returncode != 0:
        return f"rat serve --help failed: {done.stderr.strip()[-200:]}"
    return set(FLAG.findall(done.stdout))


def lacks(flags: list[str], known: set[str] | str) -> str | None:
    """Why rat cannot run with `flags`: a flag its `serve --help` does not list."""
    if isinstance(known, str):
        return known
    unknown = [f for f in flags if f.startswith("--") and f not in known]
    if unknown:
        return f"this rat does not know {' '.join(unknown)} (not in rat serve --help)"
    return None


def redis_command(exe: str, port: int) -> list[str]:
    """redis-server on loopback, no persistence, room for the idle scenario."""
    return [
        exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        "--maxclients", "15000", "--protected-mode", "no",
    ]  # fmt: skip


def server_specs(
    python: str,
    variants: list[tuple[str, list[str]]],
    check: bool = True,
    wanted: set[str] | None = None,
) -> list[ServerSpec]:
    """Every server; with `check`, why each of those `wanted` cannot run here, if so.

    The checks that cost something (npm install, making a certificate) run
    only for the servers wanted.
    """

    def costly(name: str) -> bool:
        return check and (wanted is None or name in wanted)

    known: set[str] | str = set()
    if check and any(
        n == "rat" or n.startswith("rat-") for n in (wanted or {"rat", *RAT_FEATURES})
    ):
        known = rat_serve_flags(python)

    def rat_missing(name: str, flags: list[str]) -> str | None:
        return lacks(flags, known) if costly(name) else None

    def has_module(name: str) -> bool:
        if not check:
            return True
        probe = subprocess.run(
            [python, "-c", f"import {name}"], capture_output=True, check=False, timeout=30
        )
        return probe.returncode == 0

    node = shutil.which("node")
    redis = shutil.which("redis-server")

    def rat(flags: list[str]) -> Callable[[int], list[str]]:
        return lambda port: [
            python, "-m", "rat", "serve", "--host", "127.0.0.1", "--port", str(port), *flags
        ]  # fmt: skip

    tls = tls_files() if costly("tls-uvloop") or costly("rat-tls") else ["cert.pem", "key.pem"]
    no_tls = tls if isinstance(tls, str) else None
    tls_flags = ["--tls-cert", tls[0], "--tls-key", tls[1]] if not no_tls else ["--tls-cert"]

    def variant(name: str, flags: list[str], label: str = "", **more: Any) -> ServerSpec:
        """rat serve with `flags`; skipped when this rat does not list one of them."""
        return ServerSpec(
            name,
            more.pop("proto", "line"),
            label or f"rat serve {shlex.join(flags)}",
            rat(flags),
            env=RAT_ENV,
            flags=flags,
            missing=more.pop("missing", None) or rat_missing(name, flags),
            **more,
        )

    specs = [
        ServerSpec(
            "rat",
            "line",
            "rat (epoll, edge-triggered; default flags, so --coalesce-ms 4)",
            rat([]),
            RAT_ENV,
        ),
        *(variant(name, flags) for name, flags in variants),
        variant("rat-chat", ["--chat"], bench_args=["--chat"]),
        variant("rat-chat-c0", ["--chat", "--coalesce-ms", "0"], bench_args=["--chat"]),
        variant(
            "rat-web",
            ["--web", "0"],
            "rat serve --web 0: WebSocket clients on rat's web port",
            proto="ws",
            port_from="web",
        ),
        variant(
            "rat-tls",
            tls_flags,
            "rat serve --tls-cert/--tls-key (a throwaway P-256 certificate)",
            tls=True,
            missing=no_tls,
        ),
        variant(
            "rat-admin",
            ["--admin", "0"],
            "rat serve --admin 0, its /metrics scraped every second during each run",
            scrape=True,
        ),
        variant(
            "rat-redis2",
            ["--redis"],
            "two rat nodes on one redis-server (--redis), clients split between them",
            nodes=2,
            missing=None if redis else "no redis-server (apt-get install redis-server)",
        ),
        ServerSpec(
            "asyncio",
            "line",
            "asyncio (stdlib, Protocol API)",
            lambda port: [python, str(PEERS / "asyncio_server.py"), "--port", str(port)],
        ),
        ServerSpec(
            "uvloop",
            "line",
            "asyncio on uvloop",
            lambda port: [
                python,
                str(PEERS / "asyncio_server.py"),
                "--uvloop",
                "--port",
                str(port),
            ],
            missing=None if has_module("uvloop") else "no uvloop (pip install uvloop)",
        ),
        ServerSpec(
            "node",
            "line",
            "Node.js net",
            lambda port: [node or "node", str(PEERS / "node_server.js"), "--port", str(port)],
            missing=None if node else "node is not installed",
        ),
        ServerSpec(
            "redis",
            "redis",
            "Redis pub/sub",
            lambda port: redis_command(redis or "redis-server", port),
            fixed_port=True,
            missing=None if redis else "no redis-server (apt-get install redis-server)",
        ),
        ServerSpec(
            "selectors",
            "line",
            "the simplest correct selectors server",
            lambda port: [python, str(PEERS / "minimal_selectors.py"), "--port", str(port)],
        ),
    ]
    websockets = has_module("websockets")
    no_websockets = None if websockets else "no websockets (pip install websockets)"
    ws_peer = [python, str(PEERS / "websockets_server.py")]
    specs += [
        ServerSpec(
            "ws-websockets",
            "ws",
            "WebSocket: the websockets library's broadcast(), asyncio",
            lambda port: [*ws_peer, "--port", str(port)],
            missing=no_websockets,
        ),
        ServerSpec(
            "ws-websockets-uvloop",
            "ws",
            "WebSocket: the websockets library's broadcast(), uvloop",
            lambda port: [*ws_peer, "--uvloop", "--port", str(port)],
            missing=no_websockets or (None if has_module("uvloop") else "no uvloop"),
        ),
        ServerSpec(
            "ws-node",
            "ws",
            "WebSocket: Node.js and the ws package",
            lambda port: [node or "node", str(PEERS / "node_ws_server.js"), "--port", str(port)],
            missing=node_ws_missing(node) if costly("ws-node") else None,
        ),
    ]
    tls_peer = [python, str(PEERS / "asyncio_server.py"), "--uvloop"]
    if not no_tls:
        tls_peer += tls_flags
    specs.append(
        ServerSpec(
            "tls-uvloop",
            "line",
            "TLS: the asyncio peer with an ssl context, uvloop",
            lambda port: [*tls_peer, "--port", str(port)],
            missing=tls
            if isinstance(tls, str)
            else (None if has_module("uvloop") else "no uvloop"),
            tls=True,
        )
    )
    return specs


def pin(cpu: int | None) -> Callable[[], None] | None:
    """A preexec_fn that pins the child to `cpu` (None: no pinning)."""
    if cpu is None:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


class RunningServer:
    """One server, pinned (a cluster: redis-server and its rat nodes), stopped by PID.

    `port` is where the generator connects (`ports`: every node), `pids`
    what it measures (a cluster's processes add up), `admin_port` where
    /metrics is (rat --admin).
    """

    def __init__(self, spec: ServerSpec, cpu: int | None) -> None:
        self.spec = spec
        self.children: list[tuple[subprocess.Popen[bytes], IO[bytes]]] = []
        self.ports: list[int] = []
        self.listeners: dict[str, int] = {}  # "web", "admin" -> port (from rat's log line)
        try:
            if spec.nodes > 1:
                redis_port = free_port()
                self._start(redis_command(shutil.which("redis-server") or "", redis_port),
                            cpu, redis_port)  # fmt: skip
                # the variant's flags name --redis (so that a rat without it is
                # skipped); its value is this run's redis-server
                command = [word for word in spec.command(0) if word != "--redis"]
                url = ["--redis", f"redis://127.0.0.1:{redis_port}"]
                for _ in range(spec.nodes):
                    self.ports.append(self._start([*command, *url], cpu))
            else:
                port = free_port() if spec.fixed_port else 0
                self.ports.append(self._start(spec.command(port), cpu, port))
            if spec.port_from:
                if spec.port_from not in self.listeners:
                    raise RuntimeError(
                        f"{spec.name}: rat's listening line names no {spec.port_from} port:"
                        f" {self.output()[-300:]}"
                    )
                self.ports = [self.listeners[spec.port_from]]
        except BaseException:
            self.stop()
            raise
        self.port = self.ports[0]
        self.admin_port = self.listeners.get("admin")

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc, _ in self.children]

    def _start(self, argv: list[str], cpu: int | None, port: int = 0) -> int:
        """Start one process; its port once it listens (`port` 0: from its log line)."""
        env = dict(os.environ)
        for key, value in self.spec.env.items():
            env[key] = value + (os.pathsep + env[key] if key in env and key == "PYTHONPATH" else "")
        log = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the server)
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
            preexec_fn=pin(cpu),  # noqa: PLW1509 (no threads run while servers start)
        )
        self.children.append((proc, log))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{self.spec.name} exited: {read_log(log)[-500:]}")
            if port:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    return port
                except OSError:
                    pass
            else:
                text = read_log(log)
                m = LISTENING.search(text)
                if m:
                    for kind, number in LISTENER.findall(text):
                        self.listeners.setdefault(kind, int(number))
                    return int(m.group(1))
            time.sleep(0.05)
        raise RuntimeError(f"{self.spec.name} did not start: {read_log(log)[-500:]}")

    def output(self) -> str:
        return "".join(read_log(log) for _, log in self.children)

    def stop(self) -> None:
        for proc, _ in reversed(self.children):  # the nodes before their redis-server
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
        for _, log in self.children:
            log.close()
        self.children = []


def read_log(log: IO[bytes]) -> str:
    log.seek(0)
    return log.read().decode(errors="replace")


def rat_sources() -> str:
    """A digest of rat's sources as they are on disk (what a run imports)."""
    digest = hashlib.sha1()
    for path in sorted((ROOT / "src" / "rat").rglob("*.py")):
        digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:10]


def rat_version() -> str:
    """The commit rat was measured at, and whether its sources had local changes."""
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "src/rat"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"sources {rat_sources()} (not a git checkout)"
    if not dirty:
        return f"commit {head}"
    return f"commit {head} with uncommitted changes in src/rat (sources {rat_sources()})"


def machine_info(python: str) -> list[str]:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kib / 1024 / 1024:.0f} GiB memory"
    except (OSError, ValueError, IndexError):
        pass

    def version(cmd: list[str]) -> str:
        try:
            out = subprocess.run(cmd, capture_output=True, timeout=30, check=False)
            return (out.stdout or out.stderr).decode(errors="replace").strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "not available"

    return [
        f"- CPU: {model}, {os.cpu_count()} logical CPUs{mem}",
        f"- Kernel: `{' '.join(platform.uname())}`",
        f"- Python: {version([python, '--version'])}",
        f"- uvloop: {version([python, '-c', 'import uvloop; print(uvloop.__version__)'])}",
        f"- Node.js: {version(['node', '--version'])}",
        f"- Redis: {version(['redis-server', '--version'])}",
    ]


def cpu_pressure() -> float | None:
    """The machine's CPU pressure (PSI "some" avg10, %): how often something waited for a CPU."""
    try:
        for line in Path("/proc/pressure/cpu").read_text().splitlines():
            if line.startswith("some"):
                return float(line.split()[1].split("=")[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def wait_calm(limit_s: float) -> None:
    """Wait (up to `limit_s`) until other work on the machine has calmed down."""
    deadline = time.monotonic() + limit_s
    while True:
        pressure = cpu_pressure()
        if pressure is None or pressure < 5.0:
            return
        if time.monotonic() >= deadline:
            print(f"compare: CPU pressure still {pressure:.0f}%; running anyway", file=sys.stderr)
            return
        print(
            f"compare: CPU pressure {pressure:.0f}%: waiting for a calmer machine", file=sys.stderr
        )
        time.sleep(10)


def pressure_note(raw: dict[str, dict[str, list[dict[str, Any]]]]) -> str:
    """How busy the machine was with other work during the runs."""
    values = [
        v
        for by_server in raw.values()
        for runs in by_server.values()
        for r in runs
        if "error" not in r
        for v in (r.get("cpu_pressure_pct") or {}).values()
        if v is not None
    ]
    if not values:
        return ""
    note = (
        f"Machine CPU pressure (PSI, share of time some task waited for a CPU) during the runs:"
        f" median {statistics.median(values):.0f}%, max {max(values):.0f}%."
    )
    if statistics.median(values) >= 5:
        note += (
            " Other work shared the CPUs: absolute numbers are pessimistic and noisier;"
            " the *waited* figures below show how much each server lost to it."
        )
    return note


def preflight(spec: ServerSpec) -> str | None:
    """Start `spec` once; None if it runs, else why it cannot (for a skip message)."""
    try:
        server = RunningServer(spec, None)
    except (RuntimeError, OSError) as err:
        text = str(err)
        if spec.flags and ("unrecognized arguments" in text or "invalid" in text):
            usage = next((ln for ln in text.splitlines() if "error:" in ln), text[-200:])
            return f"this rat does not accept {shlex.join(spec.flags)!r} ({usage.strip()})"
        return text[-300:]
    server.stop()
    return None


# -- the scenarios ---------------------------------------------------------------------


@dataclass
class Scenario:
    name: str
    title: str
    args: list[str]
    kind: str  # sweep | fanout | idle | connect
    servers: tuple[str, ...] = ()  # only these (empty: every server it applies to)


@dataclass
class Group:
    """The scenarios and servers that measure one set of targets (`--scenarios NAME`)."""

    title: str
    scenarios: tuple[str, ...]
    servers: tuple[str, ...]
    note: str = ""  # how to read its targets


GROUPS = {
    "ws": Group(
        "WebSocket: rat's web port against its own TCP figures and the WebSocket peers",
        ("chat-100", "fanout-1000", "idle-10k"),
        ("rat", "rat-web", "ws-websockets", "ws-websockets-uvloop", "ws-node"),
    ),
    "tls": Group(
        "TLS: rat with a certificate against plain rat and the uvloop TLS peer",
        ("chat-100", "fanout-100"),
        ("rat", "rat-tls", "tls-uvloop"),
    ),
    "admin": Group(
        "the admin endpoint: rat --admin, scraped every second, against plain rat",
        ("chat-100",),
        ("rat", "rat-admin"),
    ),
    "rooms": Group(
        "chat rooms: 100 rooms of 10 in chat mode against raw rat with 10 clients (the same"
        " receivers per line, the same total rate), and idle chat clients",
        ("rooms-raw", "rooms-chat", "room-chat", "idle-chat"),
        ("rat", "rat-c0", "rat-chat", "rat-chat-c0"),
        "Why the same total rate: then the server takes in the same lines per second and"
        " sends each to the same number of receivers, and only what chat mode does per line"
        " differs. At a rate where each line has a turn of its own (below saturation, the"
        " server with its CPU to itself) both send one write per receiver per line. Where"
        " lines pile up into shared turns, raw mode sends a receiver several lines in one"
        " write while rooms cannot (a turn's lines are for different rooms): that part of the"
        " gap is the rooms, not chat mode. The per-room rate (raw at 1/100 of it) would"
        " compare a server 100 times less busy. Coalescing (on by default) makes that part"
        " of the gap larger: it gathers several lines of the one raw room into each write,"
        " while a room's lines stay too sparse to share one; so the pair with coalescing off"
        " on both (rat-c0, rat-chat-c0) comes closer to what chat mode itself costs per line."
        " What is left between them is a thousand sockets against ten; so one room of 10 in"
        " chat mode (room-chat) against raw mode's 10 gives chat mode's own cost, everything"
        " else the same. Where either server of a pair runs a core at 95 % or more, the pair"
        " is compared on p99.",
    ),
    "backplane": Group(
        "the Redis backplane: two rat nodes on one redis-server against one rat; Redis alone",
        ("backplane-chat", "backplane-forward", "redis-publish"),
        ("rat", "rat-redis2", "redis"),
    ),
}
CHAT_100_RATES = (500, 2000, 50000)
ROOM_RATES = (500, 2000, 20000, 50000)
BACKPLANE_RATES = (2000, 10000)


def scenarios(quick: bool, duration: float) -> list[Scenario]:
    d = str(duration)
    sweep = SWEEP_RATES[:3] if quick else SWEEP_RATES
    ticks = TICK_RATES[:1] if quick else TICK_RATES
    idle_n = "2000" if quick else "10000"
    chat = ["chat", "--clients", "100", "--duration", d, "--grace", "2"]
    fanout = ["fanout", "--publishers", "1", "--window", "1024", "--duration", d]

    def rates(values: tuple[int, ...]) -> list[str]:
        return ["--rates", ",".join(map(str, values[:1] if quick else values))]

    rooms = 20 if quick else 100  # of 10 clients each
    return [
        Scenario(
            "sweep-even",
            "chat: 100 clients, every line at its own time (--pattern even), rate sweep",
            [*chat, "--rates", ",".join(map(str, sweep)), "--pattern", "even"],
            "sweep",
        ),
        Scenario(
            "sweep-ticks",
            "chat: 100 clients, lines in 5 ms batches (--pattern ticks)",
            [*chat, "--rates", ",".join(map(str, ticks)), "--pattern", "ticks"],
            "sweep",
        ),
        Scenario(
            "fanout-100",
            "fanout: 1 -> 100, 64-byte lines, max rate",
            [*fanout, "--subscribers", "100"],
            "fanout",
        ),
        Scenario(
            "fanout-1000",
            "fanout: 1 -> 1,000, 64-byte lines, max rate",
            [*fanout, "--subscribers", "1000"],
            "fanout",
        ),
        Scenario(
            "idle-10k",
            f"idle: {int(idle_n):,} connections, then one broadcast",
            ["idle", "--connections", idle_n, "--hold", "1"],
            "idle",
        ),
        Scenario(
            "connect",
            "connect: connection churn (RST) while newcomers join",
            ["connect", "--duration", d, "--in-flight", "32", "--max-connects", "200000"],
            "connect",
        ),
        Scenario(
            "chat-100",
            "chat: 100 clients, even pattern, below and above saturation",
            [*chat, *rates(CHAT_100_RATES), "--pattern", "even"],
            "sweep",
        ),
        Scenario(
            "rooms-raw",
            "rooms, raw mode: one room of 10 clients (each line: 9 clients and the reference)",
            ["chat", "--clients", "10", "--duration", d, "--grace", "2", *rates(ROOM_RATES)],
            "sweep",
            ("rat", "rat-c0"),
        ),
        Scenario(
            "rooms-chat",
            f"rooms, chat mode: {rooms} rooms of 10 clients (each line: 9 clients and the"
            " room's reference)",
            [
                "chat",
                "--clients",
                str(10 * rooms),
                "--rooms",
                str(rooms),
                *chat[3:],
                *rates(ROOM_RATES),
            ],
            "sweep",
            ("rat-chat", "rat-chat-c0"),
        ),
        Scenario(
            "room-chat",
            "one room, chat mode: 10 clients in the lobby (each line: 9 clients and the"
            " reference), to set against rooms-raw",
            ["chat", "--clients", "10", "--duration", d, "--grace", "2", *rates(ROOM_RATES)],
            "sweep",
            ("rat-chat", "rat-chat-c0"),
        ),
        Scenario(
            "idle-chat",
            f"idle, chat mode: {int(idle_n):,} connections in the lobby, then one broadcast",
            ["idle", "--connections", idle_n, "--hold", "1"],
            "idle",
            ("rat-chat",),
        ),
        Scenario(
            "backplane-chat",
            "chat: 100 clients, even pattern (two nodes: 50 on each)",
            [*chat, *rates(BACKPLANE_RATES), "--pattern", "even"],
            "sweep",
            ("rat", "rat-redis2", "redis"),
        ),
        Scenario(
            "backplane-forward",
            "two nodes: one publisher on the first as fast as a 1,024-line window allows,"
            " a subscriber on each (every line crosses Redis to the second)",
            [*fanout, "--subscribers", "2"],
            "fanout",
            ("rat-redis2",),
        ),
        Scenario(
            "redis-publish",
            "Redis alone: one publisher as fast as a 1,024-line window allows (the PUBLISH"
            " rate a backplane node gets), 2 subscribers",
            [*fanout, "--subscribers", "2"],
            "fanout",
            ("redis",),
        ),
    ]


DEFAULT_SCENARIOS = ("sweep-even", "sweep-ticks", "fanout-100", "fanout-1000", "idle-10k",
                     "connect")  # fmt: skip


def expand(names: list[str]) -> tuple[list[str], list[str]]:
    """`--scenarios` with group names replaced by their scenarios; and the groups named."""
    out: list[str] = []
    groups = []
    for name in names:
        if name in GROUPS:
            groups.append(name)
            out += [n for n in GROUPS[name].scenarios if n not in out]
        elif name not in out:
            out.append(name)
    return out, groups


def applies(sc: Scenario, spec: ServerSpec) -> bool:
    """Whether `sc` runs against `spec`: its server list; connect: one node, not chat mode."""
    if sc.servers and spec.name not in sc.servers:
        return False
    if sc.kind == "connect":
        return spec.nodes == 1 and not spec.bench_args
    return True


def reproduce(sc: Scenario, spec: ServerSpec | None = None) -> str:
    """The command that reproduces a scenario's figures (SERVER: --port PORT --server-pid PID)."""
    extra = f" {shlex.join(spec.generator_args)}" if spec and spec.generator_args else ""
    return f"rat bench {shlex.join(sc.args)}{extra} SERVER --json"


class Scraper:
    """GET /metrics every second while a run goes on (rat --admin); counts what it got.

    A thread: started after the generator's process, stopped before anything
    else is started (no fork while it runs).
    """

    def __init__(self, port: int, every: float = 1.0) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.every = every
        self.ok = 0
        self.failed = 0
        self.bytes = 0
        self.last_error = ""
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.done.wait(self.every):
            try:
                with urllib.request.urlopen(self.url, timeout=2) as reply:
                    body = reply.read()
                if b"rat_" not in body:
                    raise ValueError("no rat_ metric in the reply")
                self.ok += 1
                self.bytes += len(body)
            except (OSError, ValueError) as err:
                self.failed += 1
                self.last_error = str(err)[:200]

    def __enter__(self) -> Scraper:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(5)

    def figures(self) -> dict[str, Any]:
        return {"ok": self.ok, "failed": self.failed, "bytes": self.bytes,
                "last_error": self.last_error}  # fmt: skip


def run_bench(
    python: str, spec: ServerSpec, scenario: Scenario, server: RunningServer, cpu: int | None
) -> dict[str, Any]:
    cmd = [
        python, "-m", "ratbench", *scenario.args, *spec.generator_args,
        "--port", ",".join(map(str, server.ports)),
        "--server-pid", ",".join(map(str, server.pids)),
        "--json", "--no-progress", "--setup-timeout", "60",
    ]  # fmt: skip
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    with subprocess.Popen(
        cmd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=pin(cpu),  # noqa: PLW1509 (the scraper thread starts after this)
    ) as proc:
        scraper = Scraper(server.admin_port) if spec.scrape and server.admin_port else None
        with scraper or contextlib.nullcontext():
            try:
                stdout, stderr = proc.communicate(timeout=600)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                raise
    if proc.returncode not in (0, 1):
        try:
            error = json.loads(stdout)["error"]
        except (ValueError, KeyError, TypeError):
            error = stderr.decode(errors="replace").strip()[-800:]
        raise RuntimeError(error)
    result: dict[str, Any] = json.loads(stdout)
    if scraper is not None:
        result["scraper"] = scraper.figures()
    if spec.scrape and server.admin_port is None:
        raise RuntimeError("rat's listening line names no admin port: nothing to scrape")
    return result


# -- summarising -------------------------------------------------------------------------


def median(values: list[Any]) -> Any:
    clean = [v for v in values if v is not None]
    return statistics.median(clean) if clean else None


def run_metrics(run: dict[str, Any]) -> dict[str, Any]:
    """The figures of one fanout or idle run."""
    sm = run.get("server_metrics") or {}
    lat = run["latency_us"]
    return {
        "delivered_per_s": run["delivered_per_s"],
        "ns_per_delivered": sm.get("ns_per_delivered"),
        "server_cpu": sm.get("cpu_busy"),
        "server_user": sm.get("user_busy"),
        "server_sys": sm.get("sys_busy"),
        "p50_us": lat["p50"],
        "p99_us": lat["p99"],
        "p999_us": lat["p99.9"],
        "max_us": lat["max"],
        "anomalies": run["anomalies"] + run["disconnected"],
        "published_per_s": run.get("published_per_s"),
        "generator_busy": run["generator"]["busy"],
        "generator_bound": 1 if any("GENERATOR" in v for v in run["verdict"]) else 0,
        "rss_growth_kib": sm.get("rss_growth_kib_per_conn"),
    }


def sweep_metrics(run: dict[str, Any]) -> dict[str, Any]:
    """The figures of one sweep: per rate, and where it saturated / fell behind."""
    rows = {}
    for row, one in zip(run["sweep"], run["runs"], strict=True):
        sm = one.get("server_metrics") or {}
        rows[str(int(row["rate"]))] = {
            **{k: row[k] for k in ("delivered_per_s", "server_cpu", "server_user", "server_sys")},
            **{k: row[k] for k in ("p50_us", "p99_us", "lost", "send_late_p99_us")},
            "ns_per_delivered": sm.get("ns_per_delivered"),
            "generator_bound": 1 if row["generator_bound"] else 0,
            "anomalies": row["anomalies"],
        }
    return {
        "rates": rows,
        "saturates_at": run["saturates_at"],
        "stops_keeping_up_at": run["stops_keeping_up_at"],
        "anomalies": run["anomalies"],
    }


def connect_metrics(run: dict[str, Any]) -> dict[str, Any]:
    """The figures of one connect run; CPU per accepted connection from the server's CPU time."""
    sm = run.get("server_metrics") or {}
    new = run["newcomers"]
    completed = run["churn"]["completed"]
    cpu_s = sm.get("cpu_s")
    return {
        "accepted_per_s": run["churn"]["per_s"],
        "churn_failed": sum(run["churn"]["failed"].values()),
        "newcomers": new["count"],
        "newcomers_failed": new["failed"],
        "first_p50_us": new["first_line_us"]["p50"],
        "first_p99_us": new["first_line_us"]["p99"],
        "connect_p99_us": new["connect_us"]["p99"],
        "server_cpu": sm.get("cpu_busy"),
        "server_user_s": sm.get("user_s"),
        "server_sys_s": sm.get("sys_s"),
        "server_us_per_accept": (
            round(cpu_s * 1e6 / completed, 2) if cpu_s is not None and completed else None
        ),
        "anomalies": run["anomalies"],
    }


def med_dict(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Key by key medians (sums for counts of trouble)."""
    out: dict[str, Any] = {}
    for key in items[0]:
        values = [m.get(key) for m in items]
        if key in ("anomalies", "generator_bound", "lost", "churn_failed", "newcomers_failed"):
            out[key] = sum(v or 0 for v in values)
        else:
            out[key] = median(values)
    return out


def summarise(
    raw: dict[str, dict[str, list[dict[str, Any]]]], kinds: dict[str, str]
) -> dict[str, dict[str, Any]]:
    """scenario -> server -> medians over the repetitions (and 'runs', 'errors')."""
    out: dict[str, dict[str, Any]] = {}
    for scen, by_server in raw.items():
        kind = kinds.get(scen, "fanout")
        out[scen] = {}
        for server, runs in by_server.items():
            ok = [r for r in runs if "error" not in r]
            errors = [r["error"] for r in runs if "error" in r]
            if not ok:
                out[scen][server] = {"runs": 0, "errors": errors}
                continue
            if kind == "sweep":
                each = [sweep_metrics(r) for r in ok]
                rates = sorted({k for m in each for k in m["rates"]}, key=int)
                row: dict[str, Any] = {
                    "rates": {
                        k: med_dict([m["rates"][k] for m in each if k in m["rates"]]) for k in rates
                    },
                    "saturates_at": median([m["saturates_at"] for m in each]),
                    "stops_keeping_up_at": median([m["stops_keeping_up_at"] for m in each]),
                    "anomalies": sum(m["anomalies"] for m in each),
                }
            elif kind == "connect":
                row = med_dict([connect_metrics(r) for r in ok])
            else:
                row = med_dict([run_metrics(r) for r in ok])
            row["runs"] = len(ok)
            row["errors"] = errors
            out[scen][server] = row
    return out


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def fmt_ratio(r: float | None) -> str:
    if r is None:
        return "-"
    return f"{r:.3f}x" if r < 0.1 else f"{r:.2f}x"


def fmt_us(v: float | None) -> str:
    if v is None:
        return "-"
    if v >= 1_000_000:
        return f"{v / 1e6:.2f} s"
    return f"{v / 1000:.2f} ms" if v >= 1000 else f"{v:.0f} us"


def fmt_num(v: float | None, digits: int = 0) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def fmt_cpu(r: dict[str, Any], key: str = "server_cpu") -> str:
    """'62% (user 40% / sys 22%)'."""
    cpu = r.get(key)
    if cpu is None:
        return "-"
    user, system = r.get("server_user"), r.get("server_sys")
    if user is None or system is None:
        return f"{cpu:.0%}"
    return f"{cpu:.0%} ({user:.0%} / {system:.0%})"


def targets(s: dict[str, dict[str, Any]]) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met?) for the spine's targets (issue 10), from the even sweep.

    And issue 9.4's: under connection churn rat accepts at least 0.8x what the
    minimal selectors server does.  The churn generator may be what limits
    both (at about 13,000-15,000 connections/s on a two-core machine), so a
    second row compares the server CPU each accepted connection cost, at most
    1/0.8x the selectors server's.
    """
    sweep = s.get("sweep-even", {})

    def at(server: str, rate: str, key: str) -> Any:
        return ((sweep.get(server) or {}).get("rates") or {}).get(rate, {}).get(key)

    rows: list[tuple[str, str, bool | None]] = []

    def check(name: str, rate: str, key: str, limit: float) -> None:
        a, b = at("rat", rate, key), at("uvloop", rate, key)
        r = ratio(a, b)
        if key.endswith("_us"):
            text = f"{fmt_us(a)} vs {fmt_us(b)}"
        else:
            text = "-" if a is None or b is None else f"{a:.0%} vs {b:.0%} of a CPU"
        rows.append((name, f"{text}: {fmt_ratio(r)}", None if r is None else r <= limit))

    def lost(rate: str) -> None:
        n = at("rat", rate, "anomalies")
        rows.append(
            (
                f"chat 100 @ {int(rate):,}/s: rat loses nothing (every repetition)",
                "-" if n is None else f"{n} lost/reordered/malformed/disconnected",
                None if n is None else n == 0,
            )
        )

    rates = sorted(((sweep.get("rat") or {}).get("rates") or {}), key=int)
    for rate in (r for r in rates if int(r) < 2000):
        check(f"chat 100 @ {int(rate):,}/s: rat server CPU <= 0.7x uvloop's", rate,
              "server_cpu", 0.7)  # fmt: skip
        lost(rate)
    for rate in (r for r in rates if int(r) >= 2000):
        check(f"chat 100 @ {int(rate):,}/s: rat p99 <= 0.2x uvloop's", rate, "p99_us", 0.2)
        lost(rate)
    for scen in ("fanout-100", "fanout-1000"):
        a = (s.get(scen, {}).get("rat") or {}).get("ns_per_delivered")
        b = (s.get(scen, {}).get("uvloop") or {}).get("ns_per_delivered")
        r = ratio(a, b)
        rows.append(
            (
                f"{scen}: rat CPU per delivered line <= 1.0x uvloop's",
                f"{fmt_num(a)} vs {fmt_num(b)} ns: {fmt_ratio(r)}",
                None if r is None else r <= 1.0,
            )
        )
    growth = (s.get("idle-10k", {}).get("rat") or {}).get("rss_growth_kib")
    rows.append(
        (
            "idle 10,000 connections: rat RSS growth <= 0.5 KiB per connection",
            "-" if growth is None else f"{growth:.3f} KiB per connection",
            None if growth is None else growth <= 0.5,
        )
    )
    connect = s.get("connect", {})
    rat, peer = connect.get("rat") or {}, connect.get("selectors") or {}
    a, b = rat.get("accepted_per_s"), peer.get("accepted_per_s")
    r = ratio(a, b)
    rows.append(
        (
            "connect churn: rat accepted connections/s >= 0.8x the minimal selectors server's",
            f"{fmt_num(a)} vs {fmt_num(b)}/s: {fmt_ratio(r)}",
            None if r is None else r >= 0.8,
        )
    )
    a, b = rat.get("server_us_per_accept"), peer.get("server_us_per_accept")
    r = ratio(a, b)
    rows.append(
        (
            "connect churn: rat server CPU per accepted connection <= 1.25x the minimal"
            " selectors server's",
            f"{fmt_num(a, 1)} vs {fmt_num(b, 1)} us: {fmt_ratio(r)}",
            None if r is None else r <= 1 / 0.8,
        )
    )
    return rows


def summary_of(s: dict[str, Any], scen: str, server: str) -> dict[str, Any]:
    """One server's summary in one scenario ({} if not measured)."""
    return (s.get(scen) or {}).get(server) or {}


def figure(s: dict[str, Any], scen: str, server: str, key: str, rate: int | None = None) -> Any:
    """One median figure of the summary (a sweep's: at `rate`); None if not measured."""
    r = summary_of(s, scen, server)
    if rate is not None:
        r = (r.get("rates") or {}).get(str(rate)) or {}
    return r.get(key)


SATURATED = 0.95  # a server at this share of one core or more is saturated


def saturated(r: dict[str, Any], rate: int) -> bool:
    """One server's sweep summary: it ran a core at SATURATED or more at `rate`."""
    cpu = ((r.get("rates") or {}).get(str(rate)) or {}).get("server_cpu")
    return cpu is not None and cpu >= SATURATED


def falling_behind(r: dict[str, Any], rate: int) -> bool:
    """One server's sweep summary: at `rate` lines were lost or piled up (see `sweep_tables`)."""
    stop = r.get("stops_keeping_up_at")
    return stop is not None and rate >= stop


def node_p99s(raw: dict[str, Any], scen: str, server: str, rate: int) -> list[Any]:
    """Several servers: the median p99 of each node's receivers at `rate` (a sweep)."""
    per_node: dict[int, list[Any]] = {}
    for run in (raw.get(scen) or {}).get(server) or []:
        for one in run.get("runs") or []:
            if one["params"]["rate"] == rate:
                for i, node in enumerate(one.get("nodes") or []):
                    per_node.setdefault(i, []).append(node["latency_us"]["p99"])
    return [median(per_node[i]) for i in sorted(per_node)]


def versus(
    name: str, a: Any, b: Any, limit: float | None = None, kind: str = "us"
) -> tuple[str, str, bool | None]:
    """A target row: a against b, their ratio, and whether it is within `limit` (if any)."""
    r = ratio(a, b)
    show: Callable[[Any], str] = {
        "us": fmt_us,
        "ns": lambda v: f"{fmt_num(v)} ns",
        "cpu": lambda v: "-" if v is None else f"{v:.0%} CPU",
        "kib": lambda v: "-" if v is None else f"{v:.2f} KiB",
        "rate": lambda v: f"{fmt_num(v)}/s",
    }[kind]
    met = None if r is None or limit is None else r <= limit
    return name, f"{show(a)} vs {show(b)}: {fmt_ratio(r)}", met


def group_targets(
    group: str, s: dict[str, Any], raw: dict[str, Any]
) -> list[tuple[str, str, bool | None]]:
    """The rows of a scenario group's target table (a limit where one was set)."""
    rows: list[tuple[str, str, bool | None]] = []

    def row(
        name: str,
        key: str,
        a: tuple[str, str],
        b: tuple[str, str],
        *,
        rate: int | None = None,
        limit: float | None = None,
    ) -> None:
        """`a` and `b`: (scenario, server); `key` a summary figure (at `rate`, a sweep)."""
        kind = {"server_cpu": "cpu", "ns_per_delivered": "ns", "rss_growth_kib": "kib"}
        rows.append(
            versus(
                name,
                figure(s, *a, key, rate),
                figure(s, *b, key, rate),
                limit,
                kind.get(key, "us"),
            )
        )

    chat = "chat-100"
    if group == "ws":
        fan = "fanout-1000"
        for peer, limit in (("rat", 1.5), ("ws-websockets-uvloop", 0.5)):
            what = "rat over TCP" if peer == "rat" else peer
            row(f"fan-out 1 -> 1,000: CPU per line, rat-web <= {limit}x {what}",
                "ns_per_delivered", (fan, "rat-web"), (fan, peer), limit=limit)  # fmt: skip
        for peer, limit in (("ws-websockets", 0.5), ("ws-websockets-uvloop", 0.5),
                            ("ws-node", 1.0)):  # fmt: skip
            row(f"chat 100 WS clients @ 500/s (below saturation): server CPU, rat-web <="
                f" {limit}x {peer}", "server_cpu", (chat, "rat-web"), (chat, peer), rate=500,
                limit=limit)  # fmt: skip
        for peer in ("ws-websockets", "ws-websockets-uvloop", "ws-node"):
            for rate in (2000, 50000):
                p99_limit = 0.2 if peer.startswith("ws-websockets") else None
                row(f"chat 100 WS clients @ {rate:,}/s: p99, rat-web vs {peer}", "p99_us",
                    (chat, "rat-web"), (chat, peer), rate=rate, limit=p99_limit)  # fmt: skip
        for rate in (500, 2000, 50000):
            n = figure(s, chat, "rat-web", "anomalies", rate)
            rows.append(
                (
                    f"chat 100 WS clients @ {rate:,}/s: rat-web loses nothing",
                    "-" if n is None else f"{n} anomalies",
                    None if n is None else n == 0,
                )
            )
        growth = figure(s, "idle-10k", "rat-web", "rss_growth_kib")
        rows.append(("idle WS connections: rat-web RSS growth <= 2 KiB per connection",
                     "-" if growth is None else f"{growth:.2f} KiB per connection",
                     None if growth is None else growth <= 2.0))  # fmt: skip
        for peer in ("ws-websockets", "ws-websockets-uvloop", "ws-node"):
            row(f"idle WS connections: RSS per connection, rat-web vs {peer}", "rss_growth_kib",
                ("idle-10k", "rat-web"), ("idle-10k", peer))  # fmt: skip
    elif group == "tls":
        row(
            "chat 100 over TLS @ 500/s (below saturation): server CPU, rat-tls <= tls-uvloop",
            "server_cpu",
            (chat, "rat-tls"),
            (chat, "tls-uvloop"),
            rate=500,
            limit=1.0,
        )
        for rate in (2000, 50000):
            row(f"chat 100 over TLS @ {rate:,}/s: p99, rat-tls <= 0.5x tls-uvloop", "p99_us",
                (chat, "rat-tls"), (chat, "tls-uvloop"), rate=rate, limit=0.5)  # fmt: skip
        for rate in (500, 2000):
            row(f"chat 100 @ {rate:,}/s: server CPU, rat-tls vs plain rat", "server_cpu",
                (chat, "rat-tls"), (chat, "rat"), rate=rate)  # fmt: skip
        row(
            "fan-out 1 -> 100: ns per line, rat-tls vs plain rat (encryption per receiver)",
            "ns_per_delivered",
            ("fanout-100", "rat-tls"),
            ("fanout-100", "rat"),
        )
        row(
            "fan-out 1 -> 100: ns per line, rat-tls vs tls-uvloop",
            "ns_per_delivered",
            ("fanout-100", "rat-tls"),
            ("fanout-100", "tls-uvloop"),
        )
    elif group == "admin":
        row(
            "chat 100 @ 500/s (below saturation): server CPU, rat --admin (scraped) <= 1.03x rat",
            "server_cpu",
            (chat, "rat-admin"),
            (chat, "rat"),
            rate=500,
            limit=1.03,
        )
        row("chat 100 @ 2,000/s: server CPU, rat --admin (scraped) vs rat", "server_cpu",
            (chat, "rat-admin"), (chat, "rat"), rate=2000)  # fmt: skip
        row("chat 100 @ 50,000/s: p99, rat --admin (scraped) <= 1.05x rat", "p99_us",
            (chat, "rat-admin"), (chat, "rat"), rate=50000, limit=1.05)  # fmt: skip
        got = [r["scraper"] for r in (raw.get(chat) or {}).get("rat-admin") or [] if "scraper" in r]
        ok, failed = sum(g["ok"] for g in got), sum(g["failed"] for g in got)
        last = next((g["last_error"] for g in got if g["last_error"]), "")
        rows.append(
            (
                "/metrics scraped every second during the runs",
                f"{ok} answers, {failed} failures" + (f" ({last})" if last else ""),
                None if not got else failed == 0,
            )
        )
    elif group == "rooms":
        # The target (100 rooms against one), then chat mode's own cost (one room
        # against one: no limit of the issue's, a figure to read the target by).
        pairs: tuple[tuple[str, str, float | None], ...] = (
            ("rooms-chat", ROOMS_TEXT, 1.2),
            ("room-chat", ROOM_TEXT, None),
        )
        for scen, text, bound in pairs:
            for chat_name, raw_name, how in (
                ("rat-chat", "rat", ""),
                ("rat-chat-c0", "rat-c0", ", coalescing off on both"),
            ):
                pair = ((scen, chat_name), ("rooms-raw", raw_name))
                for rate in map(int, figure(s, "rooms-raw", raw_name, "rates") or {}):
                    sums = [summary_of(s, *side) for side in pair]
                    if any(saturated(r, rate) for r in sums):  # compared on latency
                        row(f"@ {rate:,}/s (saturated): p99, {text}{how}", "p99_us", *pair,
                            rate=rate, limit=bound)  # fmt: skip
                    elif any(falling_behind(r, rate) for r in sums):
                        # Lines piled up with no server busy: the figures measure the
                        # generator's limit, so they decide nothing between the servers.
                        cpus = [figure(s, *side, "server_cpu", rate) for side in pair]
                        load = " and ".join("-" if c is None else f"{c:.0%}" for c in cpus)
                        rows.append((f"@ {rate:,}/s: {text}{how}", "not compared: the load"
                                     f" fell behind with both servers below saturation ({load}"
                                     " of a core)", None))  # fmt: skip
                    else:
                        row(f"@ {rate:,}/s (below saturation): ns per line, {text}{how}",
                            "ns_per_delivered", *pair, rate=rate, limit=bound)  # fmt: skip
        growth = figure(s, "idle-chat", "rat-chat", "rss_growth_kib")
        rows.append(
            (
                "idle chat clients: RSS growth <= 1 KiB per connection",
                "-" if growth is None else f"{growth:.3f} KiB per connection",
                None if growth is None else growth <= 1.0,
            )
        )
    elif group == "backplane":
        scen = "backplane-chat"
        for rate in map(int, figure(s, scen, "rat", "rates") or {}):
            row(f"chat 100 @ {rate:,}/s split over two nodes: p99 vs one rat", "p99_us",
                (scen, "rat-redis2"), (scen, "rat"), rate=rate)  # fmt: skip
            nodes = node_p99s(raw, scen, "rat-redis2", rate)
            if nodes:
                name, text, met = rows[-1]
                rows[-1] = (name, f"{text} (per node: {', '.join(map(fmt_us, nodes))})", met)
            row(f"chat 100 @ {rate:,}/s: p99, Redis pub/sub alone vs one rat", "p99_us",
                (scen, "redis"), (scen, "rat"), rate=rate)  # fmt: skip
        rate = figure(s, "redis-publish", "redis", "published_per_s")
        rows.append(
            ("Redis alone: PUBLISH/s, 1,024-line window, 2 subscribers", fmt_num(rate), None)
        )
        forwarded = figure(s, "backplane-forward", "rat-redis2", "published_per_s")
        lost = figure(s, "backplane-forward", "rat-redis2", "anomalies")
        rows.append(
            (
                "cross-node: lines/s one node forwards through Redis to the other (fan-out 1 -> 2,"
                " a subscriber on each node), against Redis's PUBLISH/s above",
                f"{fmt_num(forwarded)}/s, {'-' if lost is None else lost} anomalies:"
                f" {fmt_ratio(ratio(forwarded, rate))} of Redis alone",
                None if lost is None else lost == 0,
            )
        )
    return rows


NODES_NOTE = " (`--port P1,P2` of its {} nodes, `--server-pid` theirs and redis-server's)"
ROOMS_TEXT = "rat --chat, rooms of 10, vs raw rat, 10 clients (limit 1.2x)"
ROOM_TEXT = "chat mode's own cost: rat --chat, one room of 10, vs raw rat, 10 clients"


# -- the report ---------------------------------------------------------------------------------


def needs_note(servers: list[ServerSpec]) -> str:
    """What each server needs on the generator's command line besides SERVER."""
    notes = []
    for sp in servers:
        if not (sp.generator_args or sp.nodes > 1 or sp.port_from):
            continue
        note = f"{sp.name} `{shlex.join(sp.generator_args)}`" if sp.generator_args else sp.name
        if sp.port_from:
            note += f" (`--port` is its {sp.port_from} port)"
        if sp.nodes > 1:
            note += NODES_NOTE.format(sp.nodes)
        notes.append(note)
    return "; ".join(notes) or "nothing more"


def write_report(
    *,
    s: dict[str, dict[str, Any]],
    raw: dict[str, dict[str, list[dict[str, Any]]]],
    scens: list[Scenario],
    servers: list[ServerSpec],
    meta: dict[str, Any],
    chart: bool,
) -> str:
    names = [sp.name for sp in servers]
    peers = [p for p in names if p != "rat"]
    argv = meta["argv"]
    lines = [
        "# Benchmarks",
        "",
        "rat against the same protocol on other stacks, side by side in one run, generated by"
        " `bench/compare.py`. Every number is the median of the repetitions; ratios are rat"
        " divided by the peer, from the same run (below 1 is better for rat when the metric is"
        " a cost). Under every table: the `rat bench` command that reproduces it.",
        "",
        f"Generated {meta['date']} in {meta['elapsed_s'] / 60:.1f} minutes: {meta['reps']}"
        f" repetition{'' if meta['reps'] == 1 else 's'} of each scenario, servers interleaved;"
        f" {meta['pinning']}.",
        "",
        "## Machine",
        "",
        *meta["machine"],
        f"- rat: {meta.get('rat', 'unknown')}",
        "",
        pressure_note(raw),
        "",
        "## How to reproduce",
        "",
        "```sh",
        "pip install -e '.[bench]'            # uvloop and matplotlib",
        "apt-get install redis-server nodejs  # the other peers (optional: skipped if missing)",
        f"python3 bench/compare.py{' ' + shlex.join(argv) if argv else ''}",
        "```",
        "",
        "Each run starts a fresh server, pinned to one CPU, and runs the generator, pinned to"
        " another. In the commands, SERVER is `--port PORT --server-pid PID`, plus what each"
        " server needs: "
        + needs_note(servers)
        + " (the connect scenario churns every transport: TCP, TLS, WebSocket; not chat mode).",
        "",
        "Servers: " + "; ".join(f"**{sp.name}**: {sp.label}" for sp in servers) + ".",
    ]
    if "redis" in names:
        lines.append(
            "Redis delivers each chat client's own messages back to it (pub/sub has no way to"
            " exclude the sender), so it delivers N lines per chat line where the others"
            " deliver N-1; its per-line cost is per delivered line like everyone's."
        )
    if meta["skipped"]:
        lines += ["", "Skipped: " + "; ".join(meta["skipped"]) + "."]
    if chart:
        lines += [
            "",
            "![server CPU and p99 over the rate sweep, fan-out cost, memory](benchmarks.png)",
        ]
    if "rat" in names and "uvloop" in names:
        lines += [
            "",
            "## Targets",
            "",
            "| target | measured (rat vs peer) | met |",
            "|---|---|---|",
        ]
        for name, measured, met in targets(s):
            mark = "n/a" if met is None else ("**yes**" if met else "**NO**")
            lines.append(f"| {name} | {measured} | {mark} |")
    for group in meta.get("groups", []):
        lines += ["", f"## {group}: {GROUPS[group].title}", ""]
        if GROUPS[group].note:
            lines += [GROUPS[group].note, ""]
        lines += ["| target | measured | met |", "|---|---|---|"]
        for name, measured, met in group_targets(group, s, raw):
            mark = "-" if met is None else ("**yes**" if met else "**NO**")
            lines.append(f"| {name} | {measured} | {mark} |")
    lines += ["", "## Results", ""]
    for sc in scens:
        rows = s.get(sc.name, {})
        scope = meta.get("scope") or {}
        here = [
            sp.name
            for sp in servers
            if applies(sc, sp) and (not scope or sp.name in scope.get(sc.name, []))
        ]
        lines += [f"### {sc.title}", ""]
        if sc.kind == "sweep":
            lines += sweep_tables(sc, rows, here)
        elif sc.kind == "idle":
            lines += server_table(here, rows, IDLE_COLUMNS, idle_cells)
        elif sc.kind == "connect":
            lines += server_table(here, rows, CONNECT_COLUMNS, connect_cells)
        else:
            lines += server_table(here, rows, FANOUT_COLUMNS, fanout_cells)
        only = [sp for sp in servers if sp.name in here]
        lines += ["", "```sh", reproduce(sc, only[0] if len(only) == 1 else None), "```"]
        errors = [f"{n}: {e}" for n in names for e in (rows.get(n) or {}).get("errors", [])]
        if errors:
            lines += ["", "Failures:", *[f"- `{e[:300]}`" for e in errors]]
        lines.append("")
    if "rat" in names and peers:
        lines += ratio_table(s, [sc for sc in scens if not sc.servers or "rat" in sc.servers],
                             peers)  # fmt: skip
    lines += [
        "",
        "Column notes: *server CPU* is the server's CPU time over the receive window (from the"
        " first line published to the last one received) as a share of one CPU, split into"
        " user and system time (from /proc/PID/stat, 10 ms ticks); *ns per delivered line* is"
        " that CPU time divided by the lines received by all clients; latencies are"
        " send-to-receive on the generator's clock over every line of the timed receivers;"
        " *sent late p99* is how late the generator's lines left against their schedule (well"
        " under the interval between lines: the schedule was kept); *anomalies* adds lost,"
        " reordered, duplicated, malformed lines and disconnections over all repetitions;"
        " *generator busy* is the generator's CPU share of its one CPU (gen-bound: the"
        " generator, not the server, limited that run). A sweep row marked *saturated* had the"
        " server at 95% or more of one core; *falling behind*: lines lost, fewer delivered"
        " than published, or p99 above 50 ms and 20x the lowest rate's.",
        "",
    ]
    return "\n".join(lines)


IDLE_COLUMNS = ["RSS growth per connection", "broadcast p50", "broadcast p99", "max"]
CONNECT_COLUMNS = [
    "accepted connections/s", "failed connects", "newcomers (failed)", "first line p50",
    "first line p99", "connect p99", "server CPU", "user / sys s",
]  # fmt: skip
FANOUT_COLUMNS = [
    "delivered lines/s", "server CPU (user / sys)", "ns per delivered line", "p50", "p99",
    "p99.9", "generator busy",
]  # fmt: skip


def server_table(
    names: list[str],
    rows: dict[str, Any],
    columns: list[str],
    cells: Callable[[dict[str, Any]], list[str]],
) -> list[str]:
    """A markdown table: one row per server, the given columns, then anomalies and runs."""
    columns = [*columns, "anomalies", "runs"]
    lines = ["| server | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for n in names:
        r = rows.get(n)
        if not r or not r.get("runs"):
            lines.append(f"| {n} | failed |" + " |" * (len(columns) - 2) + " 0 |")
            continue
        lines.append(
            f"| {n} | " + " | ".join([*cells(r), str(r["anomalies"]), str(r["runs"])]) + " |"
        )
    return lines


def idle_cells(r: dict[str, Any]) -> list[str]:
    growth = r["rss_growth_kib"]
    return [
        "-" if growth is None else f"{growth:.2f} KiB",
        fmt_us(r["p50_us"]),
        fmt_us(r["p99_us"]),
        fmt_us(r["max_us"]),
    ]


def connect_cells(r: dict[str, Any]) -> list[str]:
    return [
        fmt_num(r["accepted_per_s"]),
        str(r["churn_failed"]),
        f"{fmt_num(r['newcomers'])} ({r['newcomers_failed']})",
        fmt_us(r["first_p50_us"]),
        fmt_us(r["first_p99_us"]),
        fmt_us(r["connect_p99_us"]),
        "-" if r["server_cpu"] is None else f"{r['server_cpu']:.0%}",
        f"{fmt_num(r['server_user_s'], 2)} / {fmt_num(r['server_sys_s'], 2)}",
    ]


def fanout_cells(r: dict[str, Any]) -> list[str]:
    gb = f" ({r['generator_bound']} gen-bound)" if r["generator_bound"] else ""
    return [
        fmt_num(r["delivered_per_s"]),
        fmt_cpu(r),
        fmt_num(r["ns_per_delivered"]),
        fmt_us(r["p50_us"]),
        fmt_us(r["p99_us"]),
        fmt_us(r["p999_us"]),
        f"{r['generator_busy']:.0%}{gb}",
    ]


def sweep_tables(sc: Scenario, rows: dict[str, Any], names: list[str]) -> list[str]:
    """One table per rate sweep: a row per server and rate, then where each gave out."""
    lines = [
        "| server | rate/s | delivered lines/s | server CPU (user / sys) | ns per delivered"
        " line | p50 | p99 | lost | sent late p99 | |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    verdicts = []
    for n in names:
        r = rows.get(n)
        if not r or not r.get("runs"):
            lines.append(f"| {n} | failed | | | | | | | | |")
            continue
        for rate, m in r["rates"].items():
            flags = []
            if saturated(r, int(rate)):
                flags.append("saturated")
            if falling_behind(r, int(rate)):
                flags.append("falling behind")
            if m["generator_bound"]:
                flags.append("gen-bound")
            lines.append(
                f"| {n} | {int(rate):,} | {fmt_num(m['delivered_per_s'])} | {fmt_cpu(m)} |"
                f" {fmt_num(m['ns_per_delivered'])} | {fmt_us(m['p50_us'])} |"
                f" {fmt_us(m['p99_us'])} | {m['lost']} | {fmt_us(m['send_late_p99_us'])} |"
                f" {', '.join(flags)} |"
            )
        sat, stop = r["saturates_at"], r["stops_keeping_up_at"]
        verdicts.append(
            f"- **{n}**: saturates at {'-' if sat is None else f'{sat:,.0f}'} lines/s,"
            f" stops keeping up at {'-' if stop is None else f'{stop:,.0f}'} lines/s"
            f" ({r['runs']} run{'' if r['runs'] == 1 else 's'})"
        )
    return [*lines, "", *verdicts]


def ratio_table(s: dict[str, Any], scens: list[Scenario], peers: list[str]) -> list[str]:
    lines = [
        "## Ratios",
        "",
        "| scenario | metric | " + " | ".join(f"rat/{p}" for p in peers) + " |",
        "|---|---|" + "---:|" * len(peers),
    ]

    def row(scen: str, label: str, get: Callable[[dict[str, Any]], Any]) -> str:
        by_server = s.get(scen, {})
        rat = get(by_server.get("rat") or {})
        cells = [fmt_ratio(ratio(rat, get(by_server.get(p) or {}))) for p in peers]
        return f"| {scen} | {label} | " + " | ".join(cells) + " |"

    def key(name: str, rate: str | None = None) -> Callable[[dict[str, Any]], Any]:
        if rate is None:
            return lambda r: r.get(name)
        return lambda r: ((r.get("rates") or {}).get(rate) or {}).get(name)

    for sc in scens:
        if sc.kind == "sweep":
            for rate in (s.get(sc.name, {}).get("rat") or {}).get("rates") or {}:
                label = f"@ {int(rate):,}/s"
                lines.append(row(sc.name, f"server CPU {label}", key("server_cpu", rate)))
                lines.append(row(sc.name, f"p99 {label}", key("p99_us", rate)))
        elif sc.kind == "idle":
            lines.append(row(sc.name, "RSS per connection", key("rss_growth_kib")))
        elif sc.kind == "connect":
            lines.append(row(sc.name, "accepted/s", key("accepted_per_s")))
            lines.append(
                row(sc.name, "server CPU per accepted connection", key("server_us_per_accept"))
            )
            lines.append(row(sc.name, "newcomer first line p99", key("first_p99_us")))
        else:
            lines.append(row(sc.name, "ns per delivered line", key("ns_per_delivered")))
            lines.append(row(sc.name, "p99", key("p99_us")))
    return lines


def keep_notes(text: str, old: str | None) -> str:
    """Append the hand-written notes section of the previous report (or a stub)."""
    body = (
        "\n## Analysis\n\n(Hand-written: what limits each server where a target is missed;"
        " profiles. bench/compare.py keeps this section.)\n"
    )
    m = NOTES_RE.search(old or "")
    if m:
        body = m.group(1)
    return f"{text}\n{NOTES_BEGIN}{body}{NOTES_END}\n"


def draw_chart(
    s: dict[str, dict[str, Any]], scens: list[Scenario], names: list[str], path: Path
) -> bool:
    try:
        import matplotlib  # noqa: PLC0415 (optional: the `bench` extra)

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        print(
            "compare: matplotlib is not installed; no chart (pip install matplotlib)",
            file=sys.stderr,
        )
        return False
    fig, axes = plt.subplots(1, 4, figsize=(19, 4.8), gridspec_kw={"width_ratios": [4, 4, 3, 3]})
    # one colour per server for the whole figure (tab20: 20 distinct ones)
    colour = {n: plt.get_cmap("tab20")(i % 20) for i, n in enumerate(names)}
    sweep = s.get("sweep-even", {})
    for ax, key, title in (
        (axes[0], "server_cpu", "chat 100, even: server CPU (share of one core)"),
        (axes[1], "p99_us", "chat 100, even: p99 latency (us, log)"),
    ):
        for n in names:
            rates = (sweep.get(n) or {}).get("rates") or {}
            xs = [int(r) for r in rates]
            ys = [(m.get(key) or float("nan")) for m in rates.values()]
            if xs:
                ax.plot(xs, ys, marker="o", label=n, color=colour[n])
        ax.set_xscale("log")
        ax.set_xlabel("lines/s published")
        if key == "p99_us":
            ax.set_yscale("log")
        else:
            ax.axhline(SATURATED, color="k", lw=0.8, ls="--")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=8)
    # fan-out: the 1 -> N scenarios, the servers measured in them (log scale:
    # the WebSocket peers cost a hundred times more)
    fan = [sc for sc in scens if sc.kind == "fanout" and sc.name.startswith("fanout-")]
    ran = [n for n in names if any((s.get(sc.name, {}).get(n) or {}).get("runs") for sc in fan)]
    width = 0.8 / max(1, len(ran))
    for i, n in enumerate(ran):
        vals = [(s.get(sc.name, {}).get(n) or {}).get("ns_per_delivered") or 0.0 for sc in fan]
        bar_xs = [j + (i - (len(ran) - 1) / 2) * width for j in range(len(fan))]
        axes[2].bar(bar_xs, vals, width, label=n, color=colour[n])
    axes[2].set_xticks(range(len(fan)), [sc.name for sc in fan])
    axes[2].set_yscale("log")
    axes[2].set_title("fan-out: server CPU per delivered line (ns, log)", fontsize=10)
    axes[2].grid(axis="y", alpha=0.3)
    if ran:
        axes[2].legend(fontsize=7, ncol=2)
    idle = [sc for sc in scens if sc.kind == "idle" and sc.name == "idle-10k"]
    if idle:
        rows = s.get(idle[0].name, {})
        shown = [n for n in names if (rows.get(n) or {}).get("rss_growth_kib") is not None]
        vals = [rows[n]["rss_growth_kib"] for n in shown]
        axes[3].barh(shown, vals, color=[colour[n] for n in shown])
        axes[3].invert_yaxis()
        axes[3].axvline(0.5, color="k", lw=0.8, ls="--")
        axes[3].set_title("idle 10,000: KiB RSS per connection", fontsize=10)
        axes[3].tick_params(axis="y", labelsize=8)
        axes[3].grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


# -- main -------------------------------------------------------------------------------


def _bounded(kind: Callable[[str], Any], low: float, high: float) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {low:g}..{high:g}: {text!r}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench/compare.py",
        description=(__doc__ or "").split("\n\n", 1)[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="A full run (3 repetitions, 10 servers) takes roughly 40 minutes; --quick a few.",
    )
    parser.add_argument("--reps", type=_bounded(int, 1, 50), default=3, help="repetitions")
    parser.add_argument(
        "--duration", type=_bounded(float, 0.2, 60), default=2.0, help="seconds of load per run"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke test: 1 repetition, 1 s runs, 3 sweep rates, 2,000 idle connections",
    )
    parser.add_argument(
        "--wait-calm",
        type=_bounded(float, 0, 120),
        default=0.0,
        metavar="MINUTES",
        help="first wait up to this long for the machine's CPU pressure to drop below 5%%",
    )
    parser.add_argument(
        "--rat-args",
        action="append",
        type=parse_variant,
        default=None,
        metavar="rat-NAME=FLAGS",
        help="a rat variant: rat serve with FLAGS, reported as rat-NAME (repeatable;"
        f" default: {'; '.join(DEFAULT_VARIANTS)}); a variant whose flags this rat"
        " does not know is skipped",
    )
    parser.add_argument(
        "--servers",
        default=None,
        help=f"comma-separated (default: {','.join(ALL_SERVERS)} and every --rat-args"
        f" variant; {', '.join(RAT_FEATURES)} when named or in a group)",
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(DEFAULT_SCENARIOS),
        help="comma-separated scenarios or groups ("
        + "; ".join(f"{name}: {', '.join(g.scenarios)}" for name, g in GROUPS.items())
        + "); only groups: their servers unless --servers",
    )
    parser.add_argument(
        "--python",
        default=sys.executable,
        help="interpreter for rat, the Python peers and the generator",
    )
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=RESULTS,
        help="where each run's report.md, raw.json and chart go (a folder per run)",
    )
    parser.add_argument(
        "--update-docs",
        action="store_true",
        help="also write docs/BENCHMARKS.md (keeping its notes section) and docs/benchmarks.png",
    )
    parser.add_argument(
        "--from-results",
        type=Path,
        metavar="JSON",
        help="run nothing: write the report again from a saved raw.json",
    )
    return parser


def choose_servers(
    named: list[str], servers: str | None, variants: list[tuple[str, list[str]]]
) -> tuple[list[str], dict[str, list[str]]]:
    """The servers to start, and (groups named) each scenario's servers.

    `named`: the `--scenarios` names, groups among them; `servers`: `--servers`.
    A group's scenario runs against the group's servers, plus the usual ones
    (`CORE_SERVERS` and the variants) when it is also named on its own.
    """
    usual = [*ALL_SERVERS, *(name for name, _ in variants)]
    known = [*usual, *RAT_FEATURES]
    wanted_scens, groups = expand(named)
    if servers:
        return servers.split(","), {}
    if not groups:
        return usual, {}
    plain = [name for name in named if name not in GROUPS]
    core = {*CORE_SERVERS, *(name for name, _ in variants)} if plain else set()
    scope = {
        sc: sorted(
            {n for g in groups if sc in GROUPS[g].scenarios for n in GROUPS[g].servers}
            | (core if sc in plain else set())
        )
        for sc in wanted_scens
    }
    return [n for n in known if any(n in names for names in scope.values())], scope


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    variants = (
        args.rat_args if args.rat_args is not None else [parse_variant(v) for v in DEFAULT_VARIANTS]
    )
    if args.from_results:
        data = json.loads(args.from_results.read_text())
        return report(args, data["raw"], data["meta"], variants)
    if args.quick:
        args.reps, args.duration = 1, 1.0
    known = [*ALL_SERVERS, *(name for name, _ in variants), *RAT_FEATURES]
    all_scens = scenarios(args.quick, args.duration)
    wanted_scens, groups = expand(args.scenarios.split(","))
    wanted, scope = choose_servers(args.scenarios.split(","), args.servers, variants)
    unknown = [n for n in wanted if n not in known] + [
        n for n in wanted_scens if n not in {sc.name for sc in all_scens}
    ]
    if unknown:
        print(
            f"compare: unknown server or scenario: {', '.join(unknown)} (servers:"
            f" {', '.join(known)}; scenarios: {', '.join(sc.name for sc in all_scens)};"
            f" groups: {', '.join(GROUPS)})",
            file=sys.stderr,
        )
        return 2
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    server_cpu: int | None = None
    gen_cpu: int | None = None
    if len(cpus) >= 2:
        server_cpu, gen_cpu = cpus[0], cpus[1]
        pinning = f"server pinned to CPU {server_cpu}, generator to CPU {gen_cpu}"
    else:
        pinning = "no pinning (fewer than 2 CPUs available)"
    servers: list[ServerSpec] = []
    skipped: list[str] = []
    for spec in server_specs(args.python, variants, wanted=set(wanted)):
        if spec.name not in wanted or not any(applies(sc, spec) for sc in all_scens
                                              if sc.name in wanted_scens):  # fmt: skip
            continue
        why = spec.missing or preflight(spec)
        if why:
            print(f"compare: skipping {spec.name}: {why}", file=sys.stderr)
            skipped.append(f"{spec.name} ({why})")
            continue
        servers.append(spec)
    scens = [sc for sc in all_scens if sc.name in wanted_scens]
    if not any(applies(sc, sp) for sc in scens for sp in servers):
        print("compare: nothing to run", file=sys.stderr)
        return 2
    print(
        f"compare: {len(servers)} servers x {len(scens)} scenarios x {args.reps} reps; {pinning}",
        file=sys.stderr,
    )
    if args.wait_calm > 0:
        wait_calm(args.wait_calm * 60)
    version_before, sources_before = rat_version(), rat_sources()
    raw: dict[str, dict[str, list[dict[str, Any]]]] = {sc.name: {} for sc in scens}
    started = time.monotonic()
    for rep in range(args.reps):
        for sc in scens:
            order = servers[rep % len(servers) :] + servers[: rep % len(servers)]
            for spec in order:
                if not applies(sc, spec) or (scope and spec.name not in scope[sc.name]):
                    continue
                result, note = measure(args.python, spec, sc, server_cpu, gen_cpu)
                raw[sc.name].setdefault(spec.name, []).append(result)
                print(
                    f"  [{rep + 1}/{args.reps}] {sc.name:12} {spec.name:13} {note}",
                    file=sys.stderr,
                )
    meta = {
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "elapsed_s": time.monotonic() - started,
        "reps": args.reps,
        "argv": argv,
        "pinning": pinning,
        "skipped": skipped,
        "machine": machine_info(args.python),
        "servers": [sp.name for sp in servers],
        "scenarios": [sc.name for sc in scens],
        "groups": groups,
        "scope": scope,
        "duration": args.duration,
        "quick": args.quick,
        "rat": version_before
        if rat_sources() == sources_before
        else f"{version_before}, then {rat_version()} (rat's sources changed during the run!)",
    }
    return report(args, raw, meta, variants)


def measure(
    python: str, spec: ServerSpec, sc: Scenario, server_cpu: int | None, gen_cpu: int | None
) -> tuple[dict[str, Any], str]:
    """One run of `sc` against a fresh `spec` server: (result or {'error'}, a progress note)."""
    t0 = time.monotonic()
    try:
        server = RunningServer(spec, server_cpu)
    except (RuntimeError, OSError) as err:
        return {"error": f"could not start: {err}"}, f"could not start: {str(err)[:200]}"
    try:
        result = run_bench(python, spec, sc, server, gen_cpu)
    except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError) as err:
        return {"error": str(err)}, f"FAILED: {str(err)[:200]}"
    finally:
        server.stop()
    if sc.kind == "sweep":
        m = sweep_metrics(result)
        sat, stop = m["saturates_at"], m["stops_keeping_up_at"]
        note = f"saturates at {sat}, falls behind at {stop}"
    elif sc.kind == "connect":
        c = connect_metrics(result)
        note = (
            f"{fmt_num(c['accepted_per_s'])} accepted/s, newcomer p99 {fmt_us(c['first_p99_us'])}"
        )
    else:
        r = run_metrics(result)
        note = (
            f"{r['rss_growth_kib']} KiB/conn, p99 {fmt_us(r['p99_us'])}"
            if sc.kind == "idle"
            else f"{fmt_num(r['delivered_per_s'])} lines/s, {fmt_num(r['ns_per_delivered'])}"
            f" ns/line, p99 {fmt_us(r['p99_us'])}"
            + (" (gen-bound)" if r["generator_bound"] else "")
        )
    if result.get("anomalies"):
        note += f", {result['anomalies']} ANOMALIES"
    return result, f"{note}  ({time.monotonic() - t0:.1f} s)"


def report(
    args: argparse.Namespace,
    raw: dict[str, Any],
    meta: dict[str, Any],
    variants: list[tuple[str, list[str]]],
) -> int:
    """Write the report (and raw data) to a results folder; with --update-docs, to docs/."""
    scens = [
        sc for sc in scenarios(meta["quick"], meta["duration"]) if sc.name in meta["scenarios"]
    ]
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = Path(args.results_dir) / f"compare-{stamp}"
    out_dir.mkdir(parents=True, exist_ok=True)
    # the measurements first, so that a failure below loses no run (--from-results)
    (out_dir / "raw.json").write_text(json.dumps({"meta": meta, "raw": raw}, indent=1))
    summary = summarise(raw, {sc.name: sc.kind for sc in scens})
    specs = {sp.name: sp for sp in server_specs(args.python, variants, check=False)}
    servers = [specs.get(n) or ServerSpec(n, "line", n, lambda port: []) for n in meta["servers"]]
    (out_dir / "raw.json").write_text(
        json.dumps({"meta": meta, "raw": raw, "summary": summary}, indent=1)
    )
    names = [sp.name for sp in servers]
    chart = "sweep-even" in meta["scenarios"] and draw_chart(
        summary, scens, names, out_dir / "benchmarks.png"
    )
    text = write_report(s=summary, raw=raw, scens=scens, servers=servers, meta=meta, chart=chart)
    (out_dir / "report.md").write_text(text)
    print(f"compare: report in {out_dir / 'report.md'}", file=sys.stderr)
    if args.update_docs:
        target = DOCS / "BENCHMARKS.md"
        old = target.read_text() if target.exists() else None
        target.write_text(keep_notes(text, old))
        if chart:
            shutil.copyfile(out_dir / "benchmarks.png", DOCS / "benchmarks.png")
        print(f"compare: wrote {target}" + (" and docs/benchmarks.png" if chart else ""),
              file=sys.stderr)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

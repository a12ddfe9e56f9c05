#!/usr/bin/env python3
"""Run every server through every scenario, side by side, in one run; write a report.

    python3 bench/compare.py                   # everything (see --help for how long)
    python3 bench/compare.py --quick           # a smoke test: 1 short repetition
    python3 bench/compare.py --servers rat,uvloop --scenarios sweep-even,fanout-100
    python3 bench/compare.py --rat-args 'rat-coalesce=--coalesce-ms 1'   # a rat variant
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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT / "bench" / "peers"
DOCS = ROOT / "docs"
RESULTS = ROOT / "bench" / "results"
NOTES_BEGIN = "<!-- notes:begin (kept by bench/compare.py) -->"
NOTES_RE = re.compile(r"<!-- notes:begin[^>]*-->(.*?)<!-- notes:end -->", re.S)
NOTES_END = "<!-- notes:end -->"
LISTENING = re.compile(r"listening on \S+?:(\d+)")
ALL_SERVERS = (
    "rat", "asyncio", "uvloop", "node", "redis", "selectors",
    "ws-websockets", "ws-websockets-uvloop", "ws-node", "tls-uvloop",
)  # fmt: skip
DEFAULT_VARIANTS = ("rat-coalesce=--coalesce-ms 1",)
SWEEP_RATES = (500, 1000, 2000, 10000, 50000, 100000)
TICK_RATES = (2000, 50000)
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
CERT_ARGS = [
    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
    "-addext", "subjectAltName=IP:127.0.0.1",
]  # fmt: skip


def tls_files() -> list[str] | str:
    """A throwaway self-signed certificate and key for the TLS peer (or why there is none)."""
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

    specs = [
        ServerSpec(
            "rat",
            "line",
            "rat (epoll, edge-triggered; default flags)",
            rat([]),
            env={"PYTHONPATH": str(ROOT / "src")},
        ),
        *(
            ServerSpec(
                name,
                "line",
                f"rat serve {shlex.join(flags)}",
                rat(flags),
                env={"PYTHONPATH": str(ROOT / "src")},
                flags=flags,
            )
            for name, flags in variants
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
            lambda port: [
                redis or "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--maxclients",
                "15000",
                "--protected-mode",
                "no",
            ],
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
    tls = tls_files() if costly("tls-uvloop") else ["cert.pem", "key.pem"]
    tls_peer = [python, str(PEERS / "asyncio_server.py"), "--uvloop"]
    if not isinstance(tls, str):
        tls_peer += ["--tls-cert", tls[0], "--tls-key", tls[1]]
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
    """One server process, pinned, stopped by PID."""

    def __init__(self, spec: ServerSpec, cpu: int | None) -> None:
        self.spec = spec
        port = free_port() if spec.fixed_port else 0
        env = dict(os.environ)
        for key, value in spec.env.items():
            env[key] = value + (os.pathsep + env[key] if key in env and key == "PYTHONPATH" else "")
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the server)
        self.proc = subprocess.Popen(
            spec.command(port),
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=self.log,
            env=env,
            preexec_fn=pin(cpu),  # noqa: PLW1509 (this script starts no threads)
        )
        self.port = self._wait_ready(port)

    def _wait_ready(self, port: int) -> int:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.spec.name} exited: {self.output()[-500:]}")
            if port:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    return port
                except OSError:
                    pass
            else:
                m = LISTENING.search(self.output())
                if m:
                    return int(m.group(1))
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.spec.name} did not start: {self.output()[-500:]}")

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


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


def scenarios(quick: bool, duration: float) -> list[Scenario]:
    d = str(duration)
    sweep = SWEEP_RATES[:3] if quick else SWEEP_RATES
    ticks = TICK_RATES[:1] if quick else TICK_RATES
    idle_n = "2000" if quick else "10000"
    chat = ["chat", "--clients", "100", "--duration", d, "--grace", "2"]
    fanout = ["fanout", "--publishers", "1", "--window", "1024", "--duration", d]
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
    ]


def applies(sc: Scenario, spec: ServerSpec) -> bool:
    """The connect scenario speaks plain TCP (line or Redis): not to WebSocket or TLS peers."""
    return sc.kind != "connect" or (spec.proto in ("line", "redis") and not spec.tls)


def reproduce(sc: Scenario, proto: str = "line") -> str:
    """The command that reproduces a scenario's figures (SERVER: --port PORT --server-pid PID)."""
    extra = " --proto redis" if proto == "redis" else ""
    return f"rat bench {shlex.join(sc.args)}{extra} SERVER --json"


def run_bench(
    python: str, spec: ServerSpec, scenario: Scenario, server: RunningServer, cpu: int | None
) -> dict[str, Any]:
    cmd = [
        python, "-m", "ratbench", *scenario.args, "--proto", spec.proto,
        "--port", str(server.port), "--server-pid", str(server.proc.pid),
        "--json", "--no-progress", "--setup-timeout", "60", *(["--tls"] if spec.tls else []),
    ]  # fmt: skip
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        cmd,
        env=env,
        capture_output=True,
        timeout=600,
        check=False,
        stdin=subprocess.DEVNULL,
        preexec_fn=pin(cpu),
    )
    if proc.returncode not in (0, 1):
        try:
            error = json.loads(proc.stdout)["error"]
        except (ValueError, KeyError, TypeError):
            error = proc.stderr.decode(errors="replace").strip()[-800:]
        raise RuntimeError(error)
    result: dict[str, Any] = json.loads(proc.stdout)
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
    sm = run.get("server_metrics") or {}
    new = run["newcomers"]
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
    """(target, measured, met?) for the targets of issue 5, from the even sweep."""
    sweep = s.get("sweep-even", {})

    def at(server: str, rate: str, key: str) -> Any:
        return ((sweep.get(server) or {}).get("rates") or {}).get(rate, {}).get(key)

    rows: list[tuple[str, str, bool | None]] = []

    def check(name: str, rate: str, key: str, limit: float, unit: str) -> None:
        a, b = at("rat", rate, key), at("uvloop", rate, key)
        r = ratio(a, b)
        text = f"{fmt_us(a)} vs {fmt_us(b)}" if key.endswith("_us") else f"{a} vs {b} {unit}"
        rows.append((name, f"{text}: {fmt_ratio(r)}", None if r is None else r <= limit))

    check("chat 100 @ 50k/s: rat ns per delivered line <= 0.5x uvloop's", "50000",
          "ns_per_delivered", 0.5, "ns")  # fmt: skip
    lost = at("rat", "50000", "anomalies")
    rows.append(
        (
            "chat 100 @ 50k/s: rat loses nothing (every repetition)",
            "-" if lost is None else f"{lost} lost/reordered/malformed/disconnected",
            None if lost is None else lost == 0,
        )
    )
    check("chat 100 @ 50k/s: rat p99 no worse than uvloop's", "50000", "p99_us", 1.0, "")
    check("chat 100 @ 2k/s: rat server CPU <= uvloop's", "2000", "server_cpu", 1.0, "of a CPU")
    check("chat 100 @ 2k/s: rat p99 no worse than uvloop's", "2000", "p99_us", 1.0, "")
    for scen in ("fanout-100", "fanout-1000"):
        a = (s.get(scen, {}).get("rat") or {}).get("ns_per_delivered")
        b = (s.get(scen, {}).get("uvloop") or {}).get("ns_per_delivered")
        r = ratio(a, b)
        rows.append(
            (
                f"{scen}: rat ns per delivered line <= uvloop's",
                f"{fmt_num(a)} vs {fmt_num(b)} ns: {fmt_ratio(r)}",
                None if r is None else r <= 1.0,
            )
        )
    growth = (s.get("idle-10k", {}).get("rat") or {}).get("rss_growth_kib")
    rows.append(
        (
            "idle: rat RSS growth <= 0.5 KiB per connection",
            "-" if growth is None else f"{growth:.3f} KiB per connection",
            None if growth is None else growth <= 0.5,
        )
    )
    return rows


# -- the report ---------------------------------------------------------------------------------


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
        f" repetition(s) of each scenario, servers interleaved; {meta['pinning']}.",
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
        " another. In the commands, SERVER is `--port PORT --server-pid PID`, plus"
        " `--proto redis` for Redis, `--proto ws` for the ws-* servers and `--tls` for tls-*"
        " (the connect scenario runs against the plain TCP servers only).",
        "",
        "Servers: " + "; ".join(f"**{sp.name}**: {sp.label}" for sp in servers) + ".",
        "Redis delivers each chat client's own messages back to it (pub/sub has no way to"
        " exclude the sender), so it delivers N lines per chat line where the others deliver"
        " N-1; its per-line cost is per delivered line like everyone's.",
    ]
    if meta["skipped"]:
        lines += ["", "Skipped: " + "; ".join(meta["skipped"]) + "."]
    if chart:
        lines += [
            "",
            "![server CPU and p99 over the rate sweep, fan-out cost, memory](benchmarks.png)",
        ]
    if "rat" in names:
        lines += [
            "",
            "## Targets",
            "",
            "| target | measured (rat vs uvloop) | met |",
            "|---|---|---|",
        ]
        for name, measured, met in targets(s):
            mark = "n/a" if met is None else ("**yes**" if met else "**NO**")
            lines.append(f"| {name} | {measured} | {mark} |")
    lines += ["", "## Results", ""]
    for sc in scens:
        rows = s.get(sc.name, {})
        lines += [f"### {sc.title}", ""]
        if sc.kind == "sweep":
            lines += sweep_tables(sc, rows, names)
        elif sc.kind == "idle":
            lines += server_table(names, rows, IDLE_COLUMNS, idle_cells)
        elif sc.kind == "connect":
            tcp = [sp.name for sp in servers if applies(sc, sp)]
            lines += server_table(tcp, rows, CONNECT_COLUMNS, connect_cells)
        else:
            lines += server_table(names, rows, FANOUT_COLUMNS, fanout_cells)
        lines += ["", "```sh", reproduce(sc), "```"]
        errors = [f"{n}: {e}" for n in names for e in (rows.get(n) or {}).get("errors", [])]
        if errors:
            lines += ["", "Failures:", *[f"- `{e[:300]}`" for e in errors]]
        lines.append("")
    if "rat" in names and peers:
        lines += ratio_table(s, scens, peers)
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
            if m["server_cpu"] is not None and m["server_cpu"] >= 0.95:
                flags.append("saturated")
            if r["stops_keeping_up_at"] is not None and int(rate) >= r["stops_keeping_up_at"]:
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
            f" ({r['runs']} run(s))"
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
    fig, axes = plt.subplots(1, 4, figsize=(19, 4.6), gridspec_kw={"width_ratios": [4, 4, 3, 2]})
    sweep = s.get("sweep-even", {})
    for ax, key, title in (
        (axes[0], "server_cpu", "chat 100, even: server CPU (share of one core)"),
        (axes[1], "p99_us", "chat 100, even: p99 latency (us, log)"),
    ):
        for i, n in enumerate(names):
            rates = (sweep.get(n) or {}).get("rates") or {}
            xs = [int(r) for r in rates]
            ys = [(m.get(key) or float("nan")) for m in rates.values()]
            if xs:
                ax.plot(xs, ys, marker="o", label=n, color=f"C{i}")
        ax.set_xscale("log")
        ax.set_xlabel("lines/s published")
        if key == "p99_us":
            ax.set_yscale("log")
        else:
            ax.axhline(0.95, color="k", lw=0.8, ls="--")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=8)
    fan = [sc for sc in scens if sc.kind == "fanout"]
    width = 0.8 / max(1, len(names))
    for i, n in enumerate(names):
        vals = [(s.get(sc.name, {}).get(n) or {}).get("ns_per_delivered") or 0.0 for sc in fan]
        bar_xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(fan))]
        axes[2].bar(bar_xs, vals, width, label=n, color=f"C{i}")
    axes[2].set_xticks(range(len(fan)), [sc.name for sc in fan])
    axes[2].set_title("fan-out: server CPU per delivered line (ns)", fontsize=10)
    axes[2].grid(axis="y", alpha=0.3)
    idle = [sc for sc in scens if sc.kind == "idle"]
    if idle:
        vals = [(s.get(idle[0].name, {}).get(n) or {}).get("rss_growth_kib") or 0 for n in names]
        axes[3].bar(names, vals, color=[f"C{i}" for i in range(len(names))])
        axes[3].axhline(0.5, color="k", lw=0.8, ls="--")
        axes[3].set_title("idle: KiB RSS per connection", fontsize=10)
        axes[3].tick_params(axis="x", rotation=45)
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
        help=f"comma-separated (default: {','.join(ALL_SERVERS)} and every rat variant)",
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(sc.name for sc in scenarios(False, 2.0)),
        help="comma-separated",
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
    known = [*ALL_SERVERS, *(name for name, _ in variants)]
    wanted = args.servers.split(",") if args.servers else known
    all_scens = scenarios(args.quick, args.duration)
    wanted_scens = args.scenarios.split(",")
    unknown = [n for n in wanted if n not in known] + [
        n for n in wanted_scens if n not in {sc.name for sc in all_scens}
    ]
    if unknown:
        print(
            f"compare: unknown server or scenario: {', '.join(unknown)} (servers:"
            f" {', '.join(known)}; scenarios: {', '.join(sc.name for sc in all_scens)})",
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
        if spec.name not in wanted:
            continue
        why = spec.missing or preflight(spec)
        if why:
            print(f"compare: skipping {spec.name}: {why}", file=sys.stderr)
            skipped.append(f"{spec.name} ({why})")
            continue
        servers.append(spec)
    scens = [sc for sc in all_scens if sc.name in wanted_scens]
    if not servers or not scens:
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
                if not applies(sc, spec):
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
    summary = summarise(raw, {sc.name: sc.kind for sc in scens})
    specs = {sp.name: sp for sp in server_specs(args.python, variants, check=False)}
    servers = [specs.get(n) or ServerSpec(n, "line", n, lambda port: []) for n in meta["servers"]]
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = Path(args.results_dir) / f"compare-{stamp}"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "raw.json").write_text(
        json.dumps({"meta": meta, "raw": raw, "summary": summary}, indent=1)
    )
    names = [sp.name for sp in servers]
    chart = draw_chart(summary, scens, names, out_dir / "benchmarks.png")
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

"""bench/compare.py: rat variants, where reports go, and a short real run.

The full comparison takes many minutes; here it runs one scenario against
the minimal selectors peer (`--quick`), which shows that the report lands in
the results folder and that docs/ is left alone unless `--update-docs`.
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import importlib.util
import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMPARE = ROOT / "bench" / "compare.py"
DOCS = [ROOT / "docs" / "BENCHMARKS.md", ROOT / "docs" / "benchmarks.png"]


def load_compare() -> ModuleType:
    spec = importlib.util.spec_from_file_location("compare", COMPARE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["compare"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def digest(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.read_bytes() if p.exists() else b"-")
    return h.hexdigest()


def test_rat_variants_parse() -> None:
    compare = load_compare()
    assert compare.parse_variant("rat-coalesce=--coalesce-ms 1") == (
        "rat-coalesce",
        ["--coalesce-ms", "1"],
    )
    for bad in ("coalesce=--x", "rat-x", "rat x=--y"):
        with pytest.raises(argparse.ArgumentTypeError):
            compare.parse_variant(bad)


def test_notes_are_kept_under_the_old_and_the_new_marker() -> None:
    compare = load_compare()
    old = "# old\n<!-- notes:begin (kept by bench/compare) -->\nmy analysis\n<!-- notes:end -->\n"
    text = compare.keep_notes("# new report\n", old)
    assert text.startswith("# new report\n")
    assert "my analysis" in text and text.count("notes:begin") == 1
    assert "kept by bench/compare.py" in text
    assert "Analysis" in compare.keep_notes("# new\n", None)


def test_every_scenario_has_its_command() -> None:
    compare = load_compare()
    for sc in compare.scenarios(False, 2.0):
        assert compare.reproduce(sc).startswith(f"rat bench {sc.args[0]} ")
    sweep = next(sc for sc in compare.scenarios(False, 2.0) if sc.name == "sweep-even")
    assert "--rates 500,1000,2000,10000,50000,100000" in compare.reproduce(sweep)
    assert "--pattern even" in compare.reproduce(sweep)


def run_compare(*argv: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(COMPARE), *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def test_unknown_server_is_a_usage_error(tmp_path: Path) -> None:
    proc = run_compare("--servers", "nonsense", "--results-dir", str(tmp_path))
    assert proc.returncode == 2
    assert "unknown server or scenario: nonsense" in proc.stderr


@pytest.mark.slow
def test_quick_run_writes_results_not_docs(tmp_path: Path) -> None:
    before = digest(DOCS)
    proc = run_compare(
        "--quick", "--servers", "selectors,rat-bogus", "--rat-args", "rat-bogus=--no-such-flag",
        "--scenarios", "fanout-100", "--results-dir", str(tmp_path),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "skipping rat-bogus: this rat does not know --no-such-flag" in proc.stderr
    assert digest(DOCS) == before  # no --update-docs: docs/ untouched
    (run_dir,) = tmp_path.iterdir()
    report = (run_dir / "report.md").read_text()
    assert "### fanout: 1 -> 100" in report
    assert "rat bench fanout --publishers 1 --window 1024" in report  # how to reproduce
    assert "| selectors |" in report and "rat-bogus (this rat does not know" in report
    raw = json.loads((run_dir / "raw.json").read_text())
    assert raw["meta"]["servers"] == ["selectors"]
    again = run_compare("--from-results", str(run_dir / "raw.json"), "--results-dir", str(tmp_path))
    assert again.returncode == 0, again.stderr
    assert len(list(tmp_path.iterdir())) >= 1
    assert digest(DOCS) == before


def test_groups_expand_to_their_scenarios() -> None:
    compare = load_compare()
    names = {sc.name for sc in compare.scenarios(False, 2.0)}
    for group in compare.GROUPS.values():
        assert set(group.scenarios) <= names
    assert compare.expand(["rooms", "fanout-100", "rooms-raw"]) == (
        ["rooms-raw", "rooms-chat", "room-chat", "idle-chat", "fanout-100"],
        ["rooms"],
    )
    assert compare.expand(["tls", "admin"])[0] == ["chat-100", "fanout-100"]


def test_which_scenario_runs_against_which_server() -> None:
    compare = load_compare()
    specs = {sp.name: sp for sp in compare.server_specs(sys.executable, [], check=False)}
    scens = {sc.name: sc for sc in compare.scenarios(False, 2.0)}
    assert compare.applies(scens["rooms-chat"], specs["rat-chat"])
    assert not compare.applies(scens["rooms-chat"], specs["rat"])
    assert compare.applies(scens["rooms-raw"], specs["rat"])
    for name in ("rat-chat", "rat-redis2"):
        assert not compare.applies(scens["connect"], specs[name]), name
    for name in ("rat", "rat-web", "rat-tls", "ws-node", "tls-uvloop", "redis"):
        assert compare.applies(scens["connect"], specs[name]), name  # accepts per transport
    assert specs["rat-web"].generator_args == ["--proto", "ws"]
    assert specs["rat-chat"].generator_args == ["--chat"]
    assert specs["rat-tls"].generator_args == ["--tls"]
    assert "--chat" in compare.reproduce(scens["rooms-chat"], specs["rat-chat"])


def test_scenarios_and_groups_named_together() -> None:
    compare = load_compare()
    variants = [("rat-c0", ["--coalesce-ms", "0"])]
    wanted, scope = compare.choose_servers(["sweep-even", "fanout-100", "tls"], None, variants)
    core = {"rat", "rat-c0", "asyncio", "uvloop", "node", "redis", "selectors"}
    assert set(scope["sweep-even"]) == core  # not the TLS peer
    assert set(scope["fanout-100"]) == core | {"rat-tls", "tls-uvloop"}  # in both
    assert set(scope["chat-100"]) == {"rat", "rat-tls", "tls-uvloop"}  # the group's only
    assert set(wanted) == core | {"rat-tls", "tls-uvloop"}
    wanted, scope = compare.choose_servers(["tls"], None, variants)  # a group alone
    assert set(wanted) == {"rat", "rat-tls", "tls-uvloop"} and "rat-c0" not in scope["chat-100"]
    wanted, scope = compare.choose_servers(["sweep-even"], None, variants)  # no group
    assert scope == {} and "ws-node" in wanted and "rat-c0" in wanted
    assert compare.choose_servers(["tls"], "rat,uvloop", variants) == (["rat", "uvloop"], {})


def connect_run(per_s: float, completed: int, cpu_s: float | None) -> dict[str, object]:
    """A connect run as `rat bench connect --json` reports it (the figures compare.py reads)."""
    pct = {"p50": 900, "p99": 2000, "p99.9": 3000, "max": 4000}
    return {
        "churn": {"per_s": per_s, "completed": completed, "failed": {}},
        "newcomers": {"count": 50, "failed": 0, "first_line_us": pct, "connect_us": pct},
        "server_metrics": None
        if cpu_s is None
        else {"cpu_s": cpu_s, "cpu_busy": cpu_s / 2, "user_s": cpu_s / 2, "sys_s": cpu_s / 2},
        "anomalies": 0,
    }


def connect_targets(
    compare: ModuleType, rat: list[dict[str, object]], selectors: list[dict[str, object]]
) -> dict[str, tuple[str, bool | None]]:
    raw = {"connect": {"rat": rat, "selectors": selectors}}
    s = compare.summarise(raw, {"connect": "connect"})
    return {name: (measured, met) for name, measured, met in compare.targets(s)}


ACCEPT_TARGET = "connect churn: rat accepted connections/s >= 0.8x the minimal selectors server's"
CPU_TARGET = (
    "connect churn: rat server CPU per accepted connection <= 1.25x the minimal selectors server's"
)


def test_connect_targets_compare_rat_with_the_selectors_server() -> None:
    """Issue 9.4: accepts/s at least 0.8x the minimal server's; CPU per accept at most 1.25x."""
    compare = load_compare()
    # The medians of the repetitions are compared: rat 13,000/s vs 15,000/s is 0.87x;
    # 26 us vs 20 us of server CPU per accepted connection is 1.30x.
    rat = [connect_run(13_000, 26_000, 0.676), connect_run(12_000, 24_000, 0.7)]
    rat.append(connect_run(14_000, 28_000, 0.728))
    sel = [connect_run(15_000, 30_000, 0.6)] * 3
    rows = connect_targets(compare, rat, sel)
    assert rows[ACCEPT_TARGET] == ("13,000 vs 15,000/s: 0.87x", True)
    assert rows[CPU_TARGET] == ("26.0 vs 20.0 us: 1.30x", False)

    rows = connect_targets(compare, [connect_run(11_000, 22_000, 0.44)], sel)
    assert rows[ACCEPT_TARGET] == ("11,000 vs 15,000/s: 0.73x", False)
    assert rows[CPU_TARGET] == ("20.0 vs 20.0 us: 1.00x", True)

    # Without the server's CPU (no pid to read) or without the peer: not judged.
    rows = connect_targets(compare, [connect_run(14_000, 28_000, None)], sel)
    assert rows[CPU_TARGET] == ("- vs 20.0 us: -", None)
    rows = compare.targets(compare.summarise({"connect": {"rat": rat}}, {"connect": "connect"}))
    met = {name: ok for name, _, ok in rows}
    assert met[ACCEPT_TARGET] is None and met[CPU_TARGET] is None


def test_rat_flags_come_from_its_help() -> None:
    compare = load_compare()
    flags = compare.rat_serve_flags(sys.executable)
    assert isinstance(flags, set) and {"--port", "--chat", "--max-line"} <= flags
    assert compare.lacks(["--chat"], flags) is None
    assert compare.lacks(["--web", "0"], {"--port"}) == (
        "this rat does not know --web (not in rat serve --help)"
    )
    line = (
        "listening on 127.0.0.1:8080, [::1]:8080, web 127.0.0.1:8081, admin 127.0.0.1:9100,"
        " unix /run/rat.sock (pid 4242)"
    )
    assert compare.LISTENING.search(line)[1] == "8080"
    assert compare.LISTENER.findall(line) == [("web", "8081"), ("admin", "9100")]


def test_scraper_gets_metrics() -> None:
    compare = load_compare()

    class Metrics(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"rat_connections 1\n" if self.path == "/metrics" else b""
            self.send_response(200 if body else 404)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Metrics)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        with compare.Scraper(httpd.server_address[1], every=0.02) as scraper:
            deadline = time.monotonic() + 20
            while scraper.ok < 3 and time.monotonic() < deadline:
                time.sleep(0.02)
        assert scraper.ok >= 3 and scraper.failed == 0
        assert scraper.figures()["bytes"] == scraper.ok * len(b"rat_connections 1\n")
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)
    with compare.Scraper(httpd.server_address[1], every=0.02) as gone:
        deadline = time.monotonic() + 20
        while not gone.failed and time.monotonic() < deadline:
            time.sleep(0.02)
    assert gone.failed and gone.ok == 0 and gone.last_error


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server")
def test_a_cluster_is_redis_and_its_nodes(tmp_path: Path) -> None:
    """A spec with nodes=2: redis-server first, then two nodes told where it is."""
    compare = load_compare()
    node = tmp_path / "node.py"
    node.write_text(
        "import socket, sys, time\n"
        "assert sys.argv[1] == '--redis' and sys.argv[2].startswith('redis://127.0.0.1:')\n"
        "s = socket.create_server(('127.0.0.1', 0))\n"
        "print(f'listening on 127.0.0.1:{s.getsockname()[1]}', file=sys.stderr, flush=True)\n"
        "time.sleep(60)\n"
    )
    spec = compare.ServerSpec("two", "line", "two nodes", lambda port: [sys.executable, str(node)],
                              nodes=2)  # fmt: skip
    server = compare.RunningServer(spec, None)
    try:
        assert len(server.ports) == 2 and len(set(server.ports)) == 2
        assert len(server.pids) == 3  # redis-server and the two nodes
        assert server.port == server.ports[0]
    finally:
        server.stop()
    assert server.children == []


@pytest.mark.slow
def test_quick_group_run(tmp_path: Path) -> None:
    """`--scenarios rooms,admin`: the groups' servers, their target tables, skips said."""
    compare = load_compare()
    proc = run_compare("--quick", "--scenarios", "rooms,admin", "--results-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    flags = compare.rat_serve_flags(sys.executable)
    assert isinstance(flags, set)
    if "--admin" not in flags:
        assert "skipping rat-admin: this rat does not know --admin" in proc.stderr
    (run_dir,) = tmp_path.iterdir()
    report = (run_dir / "report.md").read_text()
    assert "## rooms: chat rooms" in report and "## admin: the admin endpoint" in report
    assert "idle chat clients: RSS growth <= 1 KiB per connection" in report
    assert "rat bench chat --clients 200 --rooms 20" in report and "--chat SERVER" in report
    raw = json.loads((run_dir / "raw.json").read_text())
    assert set(raw["meta"]["servers"]) <= {"rat", "rat-c0", "rat-chat", "rat-chat-c0", "rat-admin"}
    assert raw["raw"]["rooms-chat"]["rat-chat"][0]["runs"][0]["proto"] == "line+chat"
    assert "rat-chat-c0" in raw["raw"]["rooms-chat"] and "rat-c0" in raw["raw"]["rooms-raw"]
    assert "coalescing off on both (limit 1.2x)" not in report  # the pair's suffix comes last
    assert "10 clients (limit 1.2x), coalescing off on both" in report
    # chat mode's own cost: one room in chat mode against the same raw runs, no limit
    assert raw["raw"]["room-chat"]["rat-chat"][0]["runs"][0]["proto"] == "line+chat"
    assert "chat mode's own cost: rat --chat, one room of 10, vs raw rat, 10 clients |" in report
    assert "rat-chat" not in raw["raw"]["chat-100"]  # a scenario runs for its own groups' servers


def test_rooms_targets_judge_each_rate_by_what_limited_it() -> None:
    """Below saturation CPU per line, saturated p99, and no verdict where lines fell
    behind with neither server busy (the generator's limit, not the servers')."""
    compare = load_compare()

    def sweep(behind: int | None, rates: Mapping[int, tuple[float, ...]]) -> dict[str, Any]:
        """A sweep's summary: where it fell behind; per rate (CPU, ns per line, p99 us)."""
        per_rate = {
            str(rate): {"server_cpu": cpu, "ns_per_delivered": ns, "p99_us": p99}
            for rate, (cpu, ns, p99) in rates.items()
        }
        return {"stops_keeping_up_at": behind, "rates": per_rate}

    raw = {500: (0.1, 10_000, 400), 20_000: (0.5, 2_000, 4_000), 50_000: (0.4, 900, 2e6)}
    chat = {500: (0.1, 11_000, 450), 20_000: (0.97, 5_000, 4e4), 50_000: (0.75, 1_800, 3e5)}
    s = {
        "rooms-raw": {"rat": sweep(50_000, raw)},
        "rooms-chat": {"rat-chat": sweep(50_000, chat)},
        "idle-chat": {"rat-chat": {"rss_growth_kib": 0.7}},
    }
    rows = {name: (shown, ok) for name, shown, ok in compare.group_targets("rooms", s, {})}
    text = compare.ROOMS_TEXT
    assert rows[f"@ 500/s (below saturation): ns per line, {text}"] == (
        "11,000 ns vs 10,000 ns: 1.10x",
        True,
    )
    assert rows[f"@ 20,000/s (saturated): p99, {text}"] == ("40.00 ms vs 4.00 ms: 10.00x", False)
    shown, ok = rows[f"@ 50,000/s: {text}"]
    assert ok is None and shown.startswith("not compared") and "75% and 40%" in shown
    assert rows["idle chat clients: RSS growth <= 1 KiB per connection"][1] is True

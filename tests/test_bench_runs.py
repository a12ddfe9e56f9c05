"""`rat bench` for real, briefly: refusals, IPv6, the even pattern, sweeps, connect churn.

Every run is a second or two, bounded by `--duration`, `--max-lines` or
`--max-connects` and by the subprocess timeout.  Assertions are about what
arrived and what the report says, never about how fast.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
from collections.abc import Callable, Iterator

import pytest

from benchkit import (
    CHAT,
    IDLE,
    PEERS,
    FaultyRelay,
    PeerProcess,
    assert_clean,
    bench,
    faulty_relays,
    run_ratbench,
)
from conftest import ServerProcess


def ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.fixture
def faulty() -> Iterator[Callable[..., FaultyRelay]]:
    """`faulty(fault, echo=False, host=...)` starts a `FaultyRelay`."""
    yield from faulty_relays()


# -- issue 8: the bench's own connections, refusals, IPv6 ---------------------------------


def test_idle_fits_exactly_into_max_clients(rat_server: Callable[..., ServerProcess]) -> None:
    """--connections C against --max-clients C: the probe is one of the C."""
    server = rat_server("--max-clients", "40")
    s = bench(server.port, "idle", "--connections", "40", "--hold", "0.2")
    assert_clean(s)
    assert s["connections"] == 40
    assert s["delivered"] == 39  # everyone but the probe, which sent the broadcast


def test_full_server_is_reported_as_full(rat_server: Callable[..., ServerProcess]) -> None:
    server = rat_server("--max-clients", "4")
    proc = run_ratbench(
        "chat", "--clients", "5", "--duration", "1", "--port", str(server.port), "--json"
    )
    err = proc.stderr.decode()
    assert proc.returncode == 3, err
    assert "server full: the server refused connection" in err
    assert "'ERR server full'" in err and "this run opens 7 connections" in err
    assert "Broken pipe" not in err and "cannot reach" not in err and "Traceback" not in err
    assert json.loads(proc.stdout)["error"].startswith("server full")


def test_full_server_refuses_the_probe(rat_server: Callable[..., ServerProcess]) -> None:
    server = rat_server("--max-clients", "1")
    holder = server.connect()
    try:
        proc = run_ratbench("idle", "--connections", "5", "--port", str(server.port))
    finally:
        holder.close()
    err = proc.stderr.decode()
    assert proc.returncode == 3, err
    assert "server full" in err and "probe" in err and "Broken pipe" not in err


def test_server_closing_right_after_accept_is_a_refusal() -> None:
    """A server that accepts and closes at once (no ERR line) is reported as refusing."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def slam() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.close()

    thread = threading.Thread(target=slam, daemon=True)
    thread.start()
    try:
        proc = run_ratbench("chat", "--clients", "2", "--duration", "1", "--port", str(port))
    finally:
        stop.set()
        thread.join(5)
        listener.close()
    err = proc.stderr.decode()
    assert proc.returncode == 3, err
    assert "closed" in err and "right after accepting it" in err and "Traceback" not in err


def test_unexpected_line_before_sync_is_explained(faulty: Callable[..., FaultyRelay]) -> None:
    """Someone else publishing on the server: say so, and what was expected."""
    intruder = b"hello from someone else\n"
    relay = faulty(lambda r, n, line: [intruder, line] if n == 0 else [line])
    proc = run_ratbench("chat", "--clients", "3", "--duration", "1", "--port", str(relay.port))
    err = proc.stderr.decode()
    assert proc.returncode == 3, err
    assert "the server sent a line before the sync line; is something else publishing" in err
    assert "hello from someone else" in err


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")
def test_ipv6_relay(faulty: Callable[..., FaultyRelay]) -> None:
    relay = faulty(lambda r, n, line: [line], host="::1")
    s = bench(relay.port, *CHAT, "--host", "::1")
    assert_clean(s)
    assert s["server"] == f"[::1]:{relay.port}"


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")
def test_ipv6_rat(rat_server: Callable[..., ServerProcess]) -> None:
    server = rat_server("--host", "::1")
    for scenario in (CHAT, IDLE):
        assert_clean(bench(server.port, *scenario, "--host", "::1"))


def test_host_name_falls_back_to_the_address_that_answers(
    rat_server: Callable[..., ServerProcess],
) -> None:
    """localhost may resolve to ::1 first; rat listens on 127.0.0.1 only."""
    server = rat_server()
    s = bench(server.port, *CHAT, "--host", "localhost")
    assert_clean(s)


# -- issue 10: the even pattern, user/system CPU, sweeps -------------------------------------


def test_even_pattern_is_round_robin(faulty: Callable[..., FaultyRelay]) -> None:
    """Line k goes out from client k mod N: the relay sees publishers strictly in turn."""
    seen: list[int] = []

    def record(r: int, n: int, line: bytes) -> list[bytes]:
        if r == 1 and n > 0:  # the reference subscriber, after the sync line
            seen.append(int(line[:5]))
        return [line]

    relay = faulty(record)
    s = bench(
        relay.port, "chat", "--clients", "4", "--rate", "400", "--max-lines", "120",
        "--duration", "3", "--grace", "2", "--pattern", "even",
    )  # fmt: skip
    assert_clean(s)
    assert s["schedule"]["pattern"] == "even"
    assert s["schedule"]["lines_timed"] == s["published"] == 120
    assert seen == [k % 4 + 1 for k in range(120)]


def test_ticks_pattern_still_there(faulty: Callable[..., FaultyRelay]) -> None:
    relay = faulty(lambda r, n, line: [line])
    s = bench(
        relay.port, "chat", "--clients", "3", "--rate", "300", "--max-lines", "90",
        "--duration", "3", "--grace", "2", "--pattern", "ticks", "--tick-ms", "20",
    )  # fmt: skip
    assert_clean(s)
    assert s["schedule"]["pattern"] == "ticks" and s["schedule"]["tick_ms"] == 20


@pytest.mark.slow
def test_server_cpu_is_split_into_user_and_system(
    rat_server: Callable[..., ServerProcess],
) -> None:
    server = rat_server()
    proc = run_ratbench(*CHAT, "--port", str(server.port), "--server-pid", str(server.proc.pid))
    assert proc.returncode == 0, proc.stderr.decode()
    assert "(user " in proc.stdout.decode() and "system " in proc.stdout.decode()
    s = bench(server.port, *CHAT, pid=server.proc.pid)
    sm = s["server_metrics"]
    assert sm["user_s"] >= 0 and sm["sys_s"] >= 0 and "user_busy" in sm and "sys_busy" in sm


@pytest.mark.slow
def test_rate_sweep_table_and_json(rat_server: Callable[..., ServerProcess]) -> None:
    server = rat_server()
    argv = [
        "chat", "--clients", "3", "--rates", "200,100", "--duration", "0.5", "--grace", "2",
        "--port", str(server.port), "--server-pid", str(server.proc.pid),
    ]  # fmt: skip
    proc = run_ratbench(*argv, "--json", timeout=90)
    assert proc.returncode == 0, proc.stderr.decode()
    data = json.loads(proc.stdout)
    rows = data["sweep"]
    assert [r["rate"] for r in rows] == [100.0, 200.0]  # lowest first
    for r, run in zip(rows, data["runs"], strict=True):
        assert r["lost"] == 0 and r["keeping_up"] and r["saturated"] is False
        assert r["delivered_per_s"] == run["delivered_per_s"]
        assert r["server_user"] is not None and r["server_sys"] is not None
        # 3 clients get the other two's lines (2P in all), the reference gets all P
        assert run["delivered"] == run["expected"] == 3 * run["published"]
    assert data["stops_keeping_up_at"] is None
    assert any("kept up at every rate" in v for v in data["verdict"])
    table = run_ratbench(*argv, timeout=90)
    assert table.returncode == 0
    lines = table.stdout.decode().splitlines()
    assert lines[1].split()[:3] == ["rate/s", "published/s", "delivered/s"]
    assert [ln.split()[0] for ln in lines[2:4]] == ["100", "200"]
    assert any(ln.startswith("verdict: ") for ln in lines)


# -- issue 9: connection churn ------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("close", ["reset", "fin"])
def test_connect_churn_against_rat(rat_server: Callable[..., ServerProcess], close: str) -> None:
    server = rat_server()
    proc = run_ratbench(
        "connect", "--duration", "1", "--max-connects", "3000", "--close", close,
        "--newcomer-every", "20", "--port", str(server.port),
        "--server-pid", str(server.proc.pid), "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode()
    s = json.loads(proc.stdout)
    churn, new = s["churn"], s["newcomers"]
    assert 0 < churn["completed"] <= 3000 and churn["per_s"] > 0
    assert new["count"] > 0 and new["ok"] == new["count"] and not new["failures"]
    assert new["first_line_us"]["p50"] is not None and new["connect_us"]["max"] is not None
    assert s["server_metrics"]["cpu_s"] >= 0 and s["anomalies"] == 0


def test_connect_table(rat_server: Callable[..., ServerProcess]) -> None:
    server = rat_server()
    proc = run_ratbench(
        "connect", "--duration", "0.5", "--max-connects", "500", "--port", str(server.port)
    )
    out = proc.stdout.decode()
    assert proc.returncode == 0, proc.stderr.decode()
    for word in ("churn", "newcomers", "first line", "verdict"):
        assert word in out


def test_connect_newcomers_that_get_nothing_are_anomalies(
    faulty: Callable[..., FaultyRelay],
) -> None:
    """A relay that stops relaying after set-up: every newcomer fails, exit status 1."""
    relay = faulty(lambda r, n, line: [line] if r < 3 else [])  # trial newcomer is no. 2
    proc = run_ratbench(
        "connect", "--duration", "0.5", "--max-connects", "50", "--newcomer-every", "100",
        "--newcomer-timeout", "0.2", "--port", str(relay.port), "--json",
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr.decode()
    s = json.loads(proc.stdout)
    assert s["newcomers"]["failed"] == s["newcomers"]["count"] > 0
    assert "got no broadcast line within 0.2 s" in s["newcomers"]["failures"][0]


# -- the minimal selectors peer --------------------------------------------------------------


@pytest.fixture
def selectors_peer() -> Iterator[PeerProcess]:
    peer = PeerProcess([sys.executable, str(PEERS / "minimal_selectors.py"), "--port", "0"])
    yield peer
    peer.stop()


@pytest.mark.slow
@pytest.mark.parametrize("scenario", [CHAT, IDLE], ids=["chat", "idle"])
def test_smoke_minimal_selectors_peer(selectors_peer: PeerProcess, scenario: list[str]) -> None:
    assert_clean(bench(selectors_peer.port, *scenario, pid=selectors_peer.proc.pid))

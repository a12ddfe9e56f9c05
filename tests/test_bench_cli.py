"""`rat bench` as a command: options, help, exit codes and failure messages.

No server is needed here except a socket that refuses or a small relay; the
runs against rat itself are in test_bench_runs.py.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys

import pytest

from benchkit import SRC, run_ratbench
from ratbench import EXIT_CODES, HelpFormatter, add_arguments
from ratbench.errors import refusal
from ratbench.procstat import cpu_split_ns
from ratbench.sweep import judge

SCENARIOS = ("chat", "fanout", "idle", "connect")


def parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    """The `rat bench` parser and each scenario's."""
    top = argparse.ArgumentParser(prog="rat bench")
    add_arguments(top)
    sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    return [("rat bench", top), *((name, sub.choices[name]) for name in SCENARIOS)]


@pytest.mark.parametrize("name", ["rat bench", *SCENARIOS])
def test_every_option_has_help_and_a_shown_default(name: str) -> None:
    parser = dict(parsers())[name]
    formatter = HelpFormatter(prog=name)
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        assert action.help, f"{name} {action.option_strings[0]} has no help"
        shown = formatter._get_help_string(action) or ""
        assert "default" in shown, f"{name} {action.option_strings[0]} shows no default"
    text = parser.format_help()
    assert "exit status:" in text and "130" in text and "usage error" in text
    assert "default: -2" not in text and "None" not in text


def test_latency_receivers_auto_is_a_choice() -> None:
    chat = dict(parsers())["chat"]
    text = chat.format_help()
    assert "{auto,all,K}" in text and "(default: auto)" in text
    args = chat.parse_args(["--latency-receivers", "all"])
    assert args.latency_receivers == "all"
    assert chat.parse_args(["--latency-receivers", "3"]).latency_receivers == 3


def test_help_says_which_connections_are_opened() -> None:
    helps = dict(parsers())
    assert "N + workers + 1" in helps["chat"].format_help()
    assert "exactly C" in helps["idle"].format_help()
    assert "beacon" in helps["connect"].format_help()
    assert "--pattern even is the default" in helps["chat"].format_help()


def test_rat_bench_help_through_rat() -> None:
    """`rat bench --help` (the lazily imported generator) shows the exit codes."""
    env = dict(os.environ, PYTHONPATH=str(SRC))
    proc = subprocess.run(
        [sys.executable, "-m", "rat", "bench", "--help"],
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0
    assert EXIT_CODES.splitlines()[1] in proc.stdout.decode()


BAD = [
    ["chat", "--port", "70000"],
    ["chat", "--port", "0"],
    ["chat", "--tick-ms", "nan"],
    ["chat", "--tick-ms", "0"],
    ["chat", "--tick-ms", "-5"],
    ["chat", "--latency-receivers", "-7"],
    ["chat", "--latency-receivers", "some"],
    ["chat", "--rate", "0"],
    ["chat", "--rate", "inf"],
    ["chat", "--clients", "100000"],
    ["chat", "--rates", "500,x"],
    ["chat", "--rate", "5", "--rates", "1,2"],
    ["chat", "--duration", "nan"],
    ["chat", "--workers", "0"],
    ["chat", "--server-pid", "-1"],
    ["fanout", "--window", "0"],
    ["idle", "--connections", "1"],
    ["connect", "--in-flight", "0"],
    ["connect", "--newcomer-every", "-1"],
    ["chat", "--pattern", "bursty"],
]


@pytest.mark.parametrize("argv", BAD, ids=[" ".join(a) for a in BAD])
def test_bad_numbers_are_usage_errors(argv: list[str]) -> None:
    proc = run_ratbench(*argv)
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert "usage:" in err and "Traceback" not in err


def test_bad_port_through_rat_bench() -> None:
    env = dict(os.environ, PYTHONPATH=str(SRC))
    proc = subprocess.run(
        [sys.executable, "-m", "rat", "bench", "chat", "--port", "70000"],
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "must be at most 65535" in proc.stderr.decode()


def refused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # nothing listens there: connection refused


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_json_failure_is_json(scenario: str) -> None:
    proc = run_ratbench(scenario, "--port", str(refused_port()), "--json", "--duration", "1")
    assert proc.returncode == 3
    data = json.loads(proc.stdout)
    assert data["exit_status"] == 3 and data["scenario"] == scenario
    assert "cannot connect to 127.0.0.1:" in data["error"]
    assert "rat bench: cannot connect" in proc.stderr.decode()


def test_unknown_host_is_a_sentence() -> None:
    proc = run_ratbench("chat", "--host", "no-such-host.invalid", "--duration", "1")
    assert proc.returncode == 3
    err = proc.stderr.decode()
    assert "cannot resolve the server's host 'no-such-host.invalid'" in err
    assert "Traceback" not in err


def test_refusal_messages() -> None:
    assert refusal(b"ERR server full\n", "connection 3 of 3") == (
        "server full: the server refused connection 3 of 3 with 'ERR server full'"
    )
    assert (refusal(b"ERR server busy\n", "the probe") or "").startswith("server busy:")
    assert (refusal(b"-ERR max number of clients reached\r\n", "x") or "").startswith(
        "max number of clients reached:"
    )
    assert "closed the probe right after accepting it" in (refusal(b"", "the probe") or "")
    assert refusal(b"00001 0000000000 ...", "x") is None


def test_cpu_split_reads_proc() -> None:
    user, system = cpu_split_ns(os.getpid())
    assert user >= 0 and system >= 0


def row(rate: float, cpu: float | None, p99: int, lost: int = 0, delivered: float = 1.0) -> dict:  # type: ignore[type-arg]
    expected = rate * 99
    return {
        "rate": rate,
        "server_cpu": cpu,
        "p99_us": p99,
        "lost": lost,
        "expected_per_s": expected,
        "delivered_per_s": expected * delivered,
        "generator_bound": False,
    }


def test_sweep_names_saturation_and_where_it_falls_behind() -> None:
    rows = [
        row(500, 0.05, 400),
        row(2000, 0.30, 500),
        row(10000, 0.96, 3000),  # saturated, still keeping up
        row(50000, 1.0, 900_000),  # p99 exploded
        row(100000, 1.0, 2_000_000, lost=5, delivered=0.5),
    ]
    verdict = judge(rows)
    assert verdict["saturates_at"] == 10000
    assert verdict["stops_keeping_up_at"] == 50000
    assert [r["saturated"] for r in rows] == [False, False, True, True, True]
    assert [r["keeping_up"] for r in rows] == [True, True, True, False, False]
    assert "lost" in rows[4]["falling_behind"] and "delivered" in rows[4]["falling_behind"]
    assert "at 10,000 lines/s" in verdict["verdict"][0]


def test_sweep_without_server_pid_does_not_guess() -> None:
    rows = [row(500, None, 400), row(1000, None, 400, delivered=0.5)]
    verdict = judge(rows)
    assert verdict["saturates_at"] is None
    assert verdict["stops_keeping_up_at"] == 1000
    assert "--server-pid" in verdict["verdict"][0]

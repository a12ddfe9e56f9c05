"""The wording of `rat bench`'s reports, from made-up summaries (issue 8.15).

A count is written with thousands separators and the word that follows it
agrees with it: '1 line', '2 lines', '10,000 connections', never '1 lines'
or 'process(es)'.  Nothing here runs a server or a generator.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from ratbench.report import format_connect, format_sweep, format_table, plural


def lat(value: int | None = 100) -> dict[str, int | None]:
    return {"p50": value, "p99": value, "p99.9": value, "max": value}


def run_summary(scenario: str = "chat", count: int = 1, **more: Any) -> dict[str, Any]:
    """A summary as `ratbench.runner.summarize` makes it, with `count` of everything."""
    params: dict[str, Any] = {"line_size": 64, "duration_s": 1.0, "rooms": 1}
    if scenario == "chat":
        params |= {"clients": count, "rate": 100.0}
    elif scenario == "fanout":
        params |= {"publishers": count, "subscribers": count, "window": count, "rate": "max"}
    else:
        params |= {"connections": count, "hold_s": 1.0}
    s: dict[str, Any] = {
        "scenario": scenario,
        "proto": "line",
        "server": "127.0.0.1:4000",
        "servers": ["127.0.0.1:4000"],
        "params": params,
        "connections": count,
        "published": count,
        "published_per_s": None if scenario == "idle" else 1.0,
        "delivered": count,
        "expected": count,
        "delivered_per_s": 1.0,
        "delivered_to_publishers": 0,
        "notices": count,
        "latency_us": lat(),
        "latency_samples": count,
        "latency_receivers": count,
        **{k: 0 for k in ("lost", "reordered", "duplicated", "malformed", "echoed")},
        "disconnected": 0,
        "generator": {
            "processes": count,
            "cpus": count,
            "cpu_s": 0.5,
            "busy": 0.1,
            "busiest_process": 0.1,
            "wait_s": 0.0,
        },
        "cpu_pressure_pct": {"start": None, "end": None},
        "schedule": None,
        "server_metrics": None,
        "verdict": ["neither side saturated"],
    }
    s.update(more)
    return s


def connect_summary(count: int) -> dict[str, Any]:
    """A summary as `ratbench.churn.summarize` makes it, with `count` of everything."""
    return {
        "scenario": "connect",
        "proto": "line",
        "server": "127.0.0.1:4000",
        "params": {
            "workers": count,
            "in_flight": count,
            "close": "reset",
            "duration_s": 1.0,
            "newcomer_every_ms": 20.0,
            "beacon_ms": 10.0,
            "newcomer_timeout_s": 2.0,
        },
        "churn": {"attempted": count, "completed": count, "per_s": 1.0, "failed": {}},
        "newcomers": {
            "count": count,
            "ok": count,
            "failed": 0,
            "failures": [],
            "connect_us": lat(),
            "first_line_us": lat(),
        },
        "server_metrics": None,
        "generator": {"processes": count, "cpu_s": 0.5},
        "verdict": ["every newcomer joined"],
    }


def test_plural() -> None:
    assert plural(1, "line") == "1 line"
    assert plural(2, "line") == "2 lines"
    assert plural(0, "line") == "0 lines"
    assert plural(10_000, "connection") == "10,000 connections"
    assert plural(1, "process", "processes") == "1 process"
    assert plural(3, "process", "processes") == "3 processes"


@pytest.mark.parametrize("scenario", ["chat", "fanout", "idle"])
def test_one_of_everything_is_singular(scenario: str) -> None:
    text = format_table(run_summary(scenario, 1))
    plurals = r"\b1 (lines|clients|connections|processes|CPUs|receivers|frames)\b(?!/)"
    assert not re.search(plurals, text), text  # ('1 lines/s' is a rate: its unit stays)
    assert "(es)" not in text and "(s)" not in text, text
    assert "1 line" in text and "1 process on 1 CPU" in text
    assert "1 line timed on 1 receiver)" in text
    if scenario == "chat":
        assert "chat: 1 client," in text
    if scenario == "idle":
        assert "idle: 1 connection held" in text


@pytest.mark.parametrize("scenario", ["chat", "fanout", "idle"])
def test_many_are_plural_with_thousands_separators(scenario: str) -> None:
    text = format_table(run_summary(scenario, 10_000))
    assert "(es)" not in text and "(s)" not in text, text
    # Every number of four or more digits in the report has its separators.
    assert not re.search(r"(?<![\d.:])\d{4,}(?![\d.])", text), text
    assert "10,000 lines" in text and "10,000 connections" in text
    assert "10,000 processes on 10,000 CPUs" in text
    assert "10,000 lines timed on 10,000 receivers" in text
    if scenario == "fanout":
        assert "fanout: 10,000 -> 10,000, rate max, window 10,000" in text
    text = format_table(run_summary(scenario, 2))
    assert "2 lines" in text and "2 processes on 2 CPUs" in text


def test_idle_memory_row_counts_connections() -> None:
    sm = {
        "pid": 42,
        "cpu_s": 0.1,
        "user_s": 0.05,
        "sys_s": 0.05,
        "rss_kib_go": 1024,
        "rss_kib_end": 2048,
        "rss_kib_peak": 2048,
        "rss_kib_before": 1024,
        "rss_kib_held": 5024,
        "rss_growth_kib_per_conn": 0.4,
        "ns_per_delivered": None,
    }
    text = format_table(run_summary("idle", 10_000, server_metrics=sm))
    assert "holding 10,000 connections:" in text
    text = format_table(run_summary("idle", 1, server_metrics=sm))
    assert "holding 1 connection:" in text


def test_the_connect_report_counts_in_words() -> None:
    text = format_connect(connect_summary(1))
    assert "connect: 1 churn process x 1 in flight" in text
    assert "1 connection completed of 1 attempted" in text
    assert re.search(r"generator +1 process: CPU", text), text
    assert "(es)" not in text
    text = format_connect(connect_summary(10_000))
    assert "connect: 10,000 churn processes x 10,000 in flight" in text
    assert "10,000 connections completed of 10,000 attempted" in text
    assert re.search(r"generator +10,000 processes: CPU", text), text


def test_the_sweep_heading_counts_clients() -> None:
    def sweep(clients: int) -> dict[str, Any]:
        return {"sweep": [], "runs": [run_summary("chat", clients)], "verdict": []}

    assert "sweep: chat, 1 client, ? pattern, 64-byte lines" in format_sweep(sweep(1))
    assert "sweep: chat, 10,000 clients," in format_sweep(sweep(10_000))

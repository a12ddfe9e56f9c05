"""`--rates`: the same scenario at several rates, and where the server gives out.

One run per rate, lowest first, each a complete run (connect, sync, load,
drain) against the same server.  Each rate becomes one row: what was
published and delivered, the server's CPU as a share of one core (user and
system apart), latency p50/p99, lost lines and how late the generator's
lines left.  Two rates are named:

- the server *saturates* at the first rate where its CPU reaches
  `SATURATED` (95 %) of one core (known only with `--server-pid`);
- it *stops keeping up* at the first rate where lines were lost, or the
  delivered rate fell below `KEEP_UP` (90 %) of what was published (over
  the receive window, so a backlog drained during the grace period counts), or p99
  latency exploded: above both `P99_FLOOR_US` (50 ms) and `P99_GROWTH` (20)
  times the p99 at the lowest rate.

A row where the generator was the bottleneck (it could not keep the
schedule, or it was busy a whole CPU) says so: past that rate the figures
describe the generator as much as the server.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from typing import Any

from ratbench.runner import Config, run_and_summarize

SATURATED = 0.95
KEEP_UP = 0.9
P99_FLOOR_US = 50_000
P99_GROWTH = 20


def sweep_row(s: dict[str, Any]) -> dict[str, Any]:
    """One rate's row of the sweep table, from that run's summary."""
    sm = s.get("server_metrics") or {}
    sched = s.get("schedule") or {}
    late = sched.get("lateness_us") or {}
    return {
        "rate": s["params"]["rate"],
        "published_per_s": s["published_per_s"],
        "delivered_per_s": s["delivered_per_s"],
        "expected_per_s": s["expected_per_s"],
        "server_cpu": sm.get("cpu_busy"),
        "server_user": sm.get("user_busy"),
        "server_sys": sm.get("sys_busy"),
        "p50_us": s["latency_us"]["p50"],
        "p99_us": s["latency_us"]["p99"],
        "lost": s["lost"],
        "anomalies": s["anomalies"] + s["disconnected"],
        "send_late_p99_us": late.get("p99"),
        "generator_busy": s["generator"]["busy"],
        "generator_bound": any("GENERATOR" in v or "schedule was not" in v for v in s["verdict"]),
    }


def judge(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mark each row saturated / keeping up; name the rates where that changes."""
    base_p99 = next((r["p99_us"] for r in rows if r["p99_us"] is not None), None)
    saturates_at = stops_at = None
    why = ""
    for r in rows:
        cpu = r["server_cpu"]
        r["saturated"] = None if cpu is None else cpu >= SATURATED
        reasons = []
        if r["lost"]:
            reasons.append(f"{r['lost']:,} lines lost")
        expected = r["expected_per_s"] or 0
        if expected and r["delivered_per_s"] < KEEP_UP * expected:
            reasons.append(
                f"delivered {r['delivered_per_s']:,.0f} of {expected:,.0f} lines/s published"
            )
        p99 = r["p99_us"]
        if (
            p99 is not None
            and base_p99 is not None
            and p99 > max(P99_FLOOR_US, P99_GROWTH * base_p99)
        ):
            reasons.append(
                f"p99 {p99 / 1000:,.1f} ms (at the lowest rate {base_p99 / 1000:,.2f} ms)"
            )
        r["keeping_up"] = not reasons
        r["falling_behind"] = "; ".join(reasons)
        if r["saturated"] and saturates_at is None:
            saturates_at = r["rate"]
        if reasons and stops_at is None:
            stops_at, why = r["rate"], "; ".join(reasons)
    verdict = []
    if any(r["server_cpu"] is not None for r in rows):
        verdict.append(
            f"the server saturates (CPU >= {SATURATED:.0%} of one core)"
            f" at {saturates_at:,.0f} lines/s"
            if saturates_at is not None
            else f"the server never reached {SATURATED:.0%} of one core"
        )
    else:
        verdict.append("server CPU unknown (give --server-pid): saturation not judged")
    verdict.append(
        f"it stops keeping up at {stops_at:,.0f} lines/s ({why})"
        if stops_at is not None
        else "it kept up at every rate"
    )
    bound = [r["rate"] for r in rows if r["generator_bound"]]
    if bound:
        verdict.append(
            f"the generator was the bottleneck from {bound[0]:,.0f} lines/s: figures there"
            " describe the generator as much as the server"
        )
    return {"saturates_at": saturates_at, "stops_keeping_up_at": stops_at, "verdict": verdict}


def run_sweep(cfg: Config, rates: list[float], on_error: Callable[[str], None]) -> dict[str, Any]:
    """Run `cfg` once per rate; the sweep as plain data (see the module notes)."""
    runs: list[dict[str, Any]] = []
    error = None
    for rate in rates:
        if cfg.progress:
            print(f"rat bench: sweep: {rate:,.0f} lines/s", file=sys.stderr)
        summary = run_and_summarize(dataclasses.replace(cfg, rate=rate), on_error)
        if summary is None:
            error = f"the run at {rate:,.0f} lines/s failed; the sweep stopped there"
            on_error(error)
            break
        runs.append(summary)
    rows = [sweep_row(s) for s in runs]
    result: dict[str, Any] = {
        "scenario": cfg.scenario,
        "sweep": rows,
        **judge(rows),
        "anomalies": sum(r["anomalies"] for r in rows),
        "runs": runs,
    }
    if error is not None:
        result["error"] = error
    return result

"""The reports `rat bench` prints: one run, a rate sweep, the connect scenario.

Each is made from the summary dictionary that `--json` prints, so the table
and the JSON never disagree.  Every count is written with thousands
separators and the word agrees with it ('1 line', '10,000 connections').
"""

from __future__ import annotations

from typing import Any


def plural(count: int, word: str, words: str = "") -> str:
    """'1 line', '10,000 lines' ('1 process', '2 processes' with `words`)."""
    return f"{count:,} {word}" if count == 1 else f"{count:,} {words or word + 's'}"


def _us(value: int | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1_000_000:
        return f"{value / 1e6:.2f} s"
    if abs(value) >= 1000:
        return f"{value / 1000:.2f} ms"
    return f"{value} us"


def _kib(value: int | None) -> str:
    return "-" if value is None else f"{value / 1024:.1f} MiB"


def format_table(s: dict[str, Any]) -> str:
    """The human-readable report of one run."""
    p = s["params"]
    if s["scenario"] == "chat":
        what = f"{plural(p['clients'], 'client')}, {p['rate']:,.0f} lines/s in total"
        if s.get("schedule"):
            what += f" ({s['schedule']['pattern']})"
    elif s["scenario"] == "fanout":
        rate = p["rate"] if p["rate"] == "max" else f"{p['rate']:,.0f} lines/s"
        what = f"{p['publishers']:,} -> {p['subscribers']:,}, rate {rate}, window {p['window']:,}"
    else:
        what = f"{plural(p['connections'], 'connection')} held {p['hold_s']} s"
    lat = s["latency_us"]
    idle = s["scenario"] == "idle"
    delivered = f"{s['delivered']:,} of {plural(s['expected'], 'line')}"
    if not idle:
        delivered += f", {s['delivered_per_s']:,.0f} lines/s"
    if s.get("delivered_to_publishers"):
        delivered += (
            f"; and about {s['delivered_to_publishers']:,} to the publishers"
            " (every line goes to every other client; not checked)"
        )
    if s.get("notices"):
        delivered += (
            f"; {plural(s['notices'], 'frame')} without a line skipped (notices '* ...', pings)"
        )
    if p.get("rooms", 1) > 1:
        what += f", {plural(p['rooms'], 'room')}"
    servers = s.get("servers", [])
    where = f"servers {', '.join(servers)}" if len(servers) > 1 else f"server {s['server']}"
    rows = [
        (
            "run",
            f"{s['scenario']}: {what}; {p['line_size']:,}-byte lines; {where}"
            f" ({s['proto']}); {plural(s['connections'], 'connection')}",
        ),
        (
            "published",
            plural(s["published"], "line")
            + (f", {s['published_per_s']:,.0f} lines/s" if s["published_per_s"] else ""),
        ),
        ("delivered", delivered),
        (
            "latency",
            f"p50 {_us(lat['p50'])}  p99 {_us(lat['p99'])}  p99.9 {_us(lat['p99.9'])}"
            f"  max {_us(lat['max'])}  ({plural(s['latency_samples'], 'line')} timed on"
            f" {plural(s['latency_receivers'], 'receiver')})",
        ),
        (
            "anomalies",
            f"lost {s['lost']:,}  reordered {s['reordered']:,}  duplicated {s['duplicated']:,}"
            f"  malformed {s['malformed']:,}  echoed {s['echoed']:,}"
            f"  disconnected {s['disconnected']:,}",
        ),
    ]
    for node in s.get("nodes", []):
        lat_n = node["latency_us"]
        rows.append(
            (
                "node",
                f"{node['server']}: {plural(node['delivered'], 'line')} to its receivers, lost"
                f" {node['lost']:,}; latency p50 {_us(lat_n['p50'])}  p99 {_us(lat_n['p99'])}"
                f"  max {_us(lat_n['max'])}",
            )
        )
    sched = s.get("schedule")
    if sched:
        late = sched["lateness_us"]
        how = (
            f"even: one line every {sched['interval_us']:g} us, round-robin over publishers"
            if sched["pattern"] == "even"
            else f"ticks: every {sched['tick_ms']:g} ms each publisher sends what is due"
        )
        rows.insert(
            2,
            (
                "schedule",
                f"{how}; sent after due: p50 {_us(late['p50'])}  p99 {_us(late['p99'])}"
                f"  max {_us(late['max'])}",
            ),
        )
    sm = s["server_metrics"]
    if sm:
        ns = sm["ns_per_delivered"]
        line = (
            f"pid {sm['pid']}: CPU {sm['cpu_s']:.3f} s"
            f" (user {sm['user_s']:.2f} s, system {sm['sys_s']:.2f} s)"
        )
        if not idle:
            line += f", {sm['cpu_busy']:.0%} of one CPU"
            if "user_busy" in sm:
                line += f" (user {sm['user_busy']:.0%}, system {sm['sys_busy']:.0%})"
            if sm["wait_s"] >= 0.001:
                line += f", waited {sm['wait_s']:.3f} s for it"
            line += f", {ns:,.0f} ns per delivered line" if ns is not None else ""
        rows.append(("server", line))
        mem = (
            f"RSS {_kib(sm['rss_kib_go'])} at start of load, {_kib(sm['rss_kib_end'])} at end,"
            f" peak {_kib(sm['rss_kib_peak'])}"
        )
        if "rss_growth_kib_per_conn" in sm:
            mem = (
                f"RSS {_kib(sm['rss_kib_before'])} before, {_kib(sm['rss_kib_held'])} holding"
                f" {plural(p['connections'], 'connection')}:"
                f" {sm['rss_growth_kib_per_conn']:.2f} KiB per connection"
            )
        rows.append(("memory", mem))
    g = s["generator"]
    gen = (
        f"{plural(g['processes'], 'process', 'processes')} on {plural(g['cpus'], 'CPU')}:"
        f" CPU {g['cpu_s']:.3f} s"
    )
    if not idle:
        gen += f", {g['busy']:.0%} busy (busiest process {g['busiest_process']:.0%})"
        gen += f", waited {g['wait_s']:.3f} s for a CPU" if g["wait_s"] >= 0.001 else ""
    pressure = s["cpu_pressure_pct"]["end"]
    if pressure is not None:
        gen += f"; machine CPU pressure {pressure:.0f}%"
    rows.append(("generator", gen))
    rows.append(("verdict", "; ".join(s["verdict"])))
    width = max(len(k) for k, _ in rows)
    return "".join(f"{k:<{width}}  {v}\n" for k, v in rows)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def format_sweep(result: dict[str, Any]) -> str:
    """The table of a `--rates` sweep: one row per rate, then the verdict."""
    head = (
        "rate/s",
        "published/s",
        "delivered/s",
        "server CPU",
        "user",
        "sys",
        "p50",
        "p99",
        "lost",
        "sent late p99",
        "gen busy",
        "",
    )
    rows = [head]
    for r in result["sweep"]:
        flag = "saturated" if r["saturated"] else ""
        if not r["keeping_up"]:
            flag = (flag + ", " if flag else "") + "falling behind"
        if r["generator_bound"]:
            flag = (flag + ", " if flag else "") + "generator-bound"
        rows.append(
            (
                f"{r['rate']:,.0f}",
                f"{r['published_per_s']:,.0f}",
                f"{r['delivered_per_s']:,.0f}",
                _pct(r["server_cpu"]),
                _pct(r["server_user"]),
                _pct(r["server_sys"]),
                _us(r["p50_us"]),
                _us(r["p99_us"]),
                f"{r['lost']:,}",
                _us(r["send_late_p99_us"]),
                _pct(r["generator_busy"]),
                flag,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = [
        "  ".join(
            cell.ljust(w) if i in (0, len(head) - 1) else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]
    first = result["runs"][0] if result["runs"] else None
    if first is not None:
        p = first["params"]
        sched = first.get("schedule") or {}
        clients = p.get("clients")
        lines.insert(
            0,
            f"sweep: {first['scenario']},"
            f" {'? clients' if clients is None else plural(clients, 'client')},"
            f" {sched.get('pattern', '?')} pattern, {p['line_size']:,}-byte lines,"
            f" {p['duration_s']:g} s per rate; server {first['server']} ({first['proto']})",
        )
    lines += [f"verdict: {v}" for v in result["verdict"]]
    if "error" in result:
        lines.append(f"error: {result['error']}")
    return "\n".join(lines) + "\n"


def format_connect(s: dict[str, Any]) -> str:
    """The report of the connect scenario."""
    p = s["params"]
    churn = s["churn"]
    new = s["newcomers"]
    fails = ", ".join(f"{k} {v:,}" for k, v in sorted(churn["failed"].items())) or "none"
    rows = [
        (
            "run",
            f"connect: {plural(p['workers'], 'churn process', 'churn processes')}"
            f" x {p['in_flight']:,} in flight,"
            f" close by {p['close']}, {p['duration_s']:g} s; server {s['server']} ({s['proto']})",
        ),
        (
            "churn",
            f"{plural(churn['completed'], 'connection')} completed"
            f" of {churn['attempted']:,} attempted,"
            f" {churn['per_s']:,.0f}/s; failed: {fails}",
        ),
        (
            "newcomers",
            f"{new['ok']:,} of {new['count']:,} joined (connect, then a broadcast line within"
            f" {p['newcomer_timeout_s']:g} s), one every {p['newcomer_every_ms']:g} ms",
        ),
        (
            "connect",
            f"handshake p50 {_us(new['connect_us']['p50'])}  p99 {_us(new['connect_us']['p99'])}"
            f"  max {_us(new['connect_us']['max'])}",
        ),
        (
            "first line",
            f"p50 {_us(new['first_line_us']['p50'])}  p99 {_us(new['first_line_us']['p99'])}"
            f"  p99.9 {_us(new['first_line_us']['p99.9'])}  max {_us(new['first_line_us']['max'])}"
            f"  (from connect() to the first broadcast line; beacon every {p['beacon_ms']:g} ms)",
        ),
    ]
    if new["failures"]:
        rows.append(("failures", "; ".join(new["failures"][:3])))
    sm = s["server_metrics"]
    if sm:
        rows.append(
            (
                "server",
                f"pid {sm['pid']}: CPU {sm['cpu_s']:.3f} s (user {sm['user_s']:.2f} s,"
                f" system {sm['sys_s']:.2f} s), {sm['cpu_busy']:.0%} of one CPU;"
                f" RSS {_kib(sm['rss_kib_end'])} at end, peak {_kib(sm['rss_kib_peak'])}",
            )
        )
    g = s["generator"]
    processes = plural(g["processes"], "process", "processes")
    rows.append(("generator", f"{processes}: CPU {g['cpu_s']:.3f} s"))
    rows.append(("verdict", "; ".join(s["verdict"])))
    width = max(len(k) for k, _ in rows)
    return "".join(f"{k:<{width}}  {v}\n" for k, v in rows)

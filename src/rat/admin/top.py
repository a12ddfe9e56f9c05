"""`rat top`: a running server, seen through its admin endpoint, refreshed in place.

Every `--interval` seconds it fetches `/metrics` and
`/clients?sort=lag&limit=N` and draws one frame:

- rates, from the difference of two scrapes of the counters: lines in and
  out per second, bytes in and out, connections accepted, closed, refused;
- the open connections by transport, the rooms, the queued bytes and the lag
  quantiles (from the `rat_client_lag_seconds` histogram);
- the loop: turns per second, turn-time quantiles and how busy it was (the
  share of the interval spent working, from `rat_loop_turn_seconds_sum`);
- the laggiest clients, with what they have queued, how fast they drain and
  how long before the server cuts them.

Quantiles read from a histogram are bucket bounds ("p99 <= 250 ms"), not
exact values.  A frame is redrawn with ANSI escapes (cursor home, clear to
the end of each line and of the screen): no curses.  On a terminal it is cut
to the terminal's width and height (the laggiest clients that do not fit are
left out), so that a redraw never scrolls.  `--once` prints a single
frame without escapes, after two scrapes `--interval` apart, for scripts.

Only the standard library: `http.client` to fetch, a small parser for the
text exposition format (the official one, `prometheus_client`, is a test
dependency, used to check ours).
"""

from __future__ import annotations

import http.client
import json
import math
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from rat.metrics import human_bytes, human_rate

FETCH_TIMEOUT = 5.0  # seconds for one HTTP request to the admin endpoint

Labels = tuple[tuple[str, str], ...]
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_exposition(text: str) -> dict[str, dict[Labels, float]]:
    """Prometheus text format -> {sample name: {labels: value}} (comments skipped)."""
    samples: dict[str, dict[Labels, float]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m is None:
            continue
        name, inner, value = m.groups()
        labels = tuple(
            sorted(
                (key, raw.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\"))
                for key, raw in _LABEL.findall(inner or "")
            )
        )
        try:
            samples.setdefault(name, {})[labels] = float(value)
        except ValueError:
            continue
    return samples


@dataclass
class Scrape:
    """One look at the server: its metrics, its laggiest clients, and when."""

    at: float  # local monotonic time
    metrics: dict[str, dict[Labels, float]]
    clients: dict[str, Any]

    def value(self, name: str, **labels: str) -> float:
        """One sample (0 if absent); with no labels given, the sum over all of them."""
        series = self.metrics.get(name, {})
        if labels:
            return series.get(tuple(sorted(labels.items())), 0.0)
        return sum(series.values())

    def by_label(self, name: str, key: str) -> dict[str, float]:
        return {dict(labels).get(key, ""): v for labels, v in self.metrics.get(name, {}).items()}

    def buckets(self, name: str) -> list[tuple[float, float]]:
        """A histogram's (upper bound, cumulative count), in order."""
        out = [(float(b), v) for b, v in self.by_label(f"{name}_bucket", "le").items()]
        return sorted(out)


def fetch(host: str, port: int, clients: int) -> Scrape:
    """Scrape /metrics and the laggiest clients (raises OSError or ValueError)."""
    conn = http.client.HTTPConnection(host, port, timeout=FETCH_TIMEOUT)
    try:
        metrics = _get(conn, "/metrics")
        conn.close()
        conn = http.client.HTTPConnection(host, port, timeout=FETCH_TIMEOUT)
        laggiest = _get(conn, f"/clients?sort=lag&limit={clients}")
    finally:
        conn.close()
    return Scrape(time.monotonic(), parse_exposition(metrics), json.loads(laggiest))


def _get(conn: http.client.HTTPConnection, path: str) -> str:
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read().decode("utf-8", "replace")
    if response.status != 200:
        raise ValueError(f"GET {path}: {response.status} {body.strip()}")
    return body


def quantile(buckets: Sequence[tuple[float, float]], q: float) -> float | None:
    """The upper bound of the bucket holding quantile `q`; None with no observations."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    want = q * buckets[-1][1]
    for bound, running in buckets:
        if running >= want:
            return bound
    return buckets[-1][0]


def delta_buckets(
    old: Sequence[tuple[float, float]], new: Sequence[tuple[float, float]]
) -> list[tuple[float, float]]:
    """What a cumulative histogram gained between two scrapes."""
    before = dict(old)
    return [(bound, running - before.get(bound, 0.0)) for bound, running in new]


def human_seconds(value: float | None) -> str:
    """'<= 250 ms'-style bounds and durations: '12 us', '3.5 ms', '2.50 s', '+Inf'."""
    if value is None:
        return "-"
    if math.isinf(value):
        return "+Inf"
    if value < 0.001:
        return f"{value * 1e6:.0f} us"
    if value < 1:
        return f"{value * 1e3:.3g} ms"
    return f"{value:.2f} s"


def human_duration(seconds: float) -> str:
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h{minutes:02d}m"
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s"


def render_frame(address: str, old: Scrape, new: Scrape, width: int | None = None) -> list[str]:
    """One screen: rates between two scrapes, then the laggiest clients (cut at `width`)."""
    span = max(new.at - old.at, 1e-9)

    def rate(name: str) -> float:
        return max(0.0, new.value(name) - old.value(name)) / span

    transports = new.by_label("rat_connections", "transport")
    started = new.value("rat_start_time_seconds")
    uptime = human_duration(time.time() - started) if started else "?"
    lag = new.buckets("rat_client_lag_seconds")
    turn_name = "rat_loop_turn_seconds"
    turns = delta_buckets(old.buckets(turn_name), new.buckets(turn_name))
    turn_count = rate("rat_loop_turn_seconds_count")
    busy = rate("rat_loop_turn_seconds_sum")
    open_total = sum(transports.values())
    by_transport = "  ".join(f"{name} {count:,.0f}" for name, count in sorted(transports.items()))
    lines = [
        f"rat top  {address}  up {uptime}  {time.strftime('%H:%M:%S')}  every {span:.1f}s",
        "",
        f"clients    {open_total:,.0f} open ({by_transport})   rooms {new.value('rat_rooms'):,.0f}"
        f"   half-closed {new.value('rat_half_closed_connections'):,.0f}",
        f"           {rate('rat_connections_accepted_total'):,.1f}/s accepted"
        f"   {rate('rat_disconnects_total'):,.1f}/s closed"
        f"   {rate('rat_connections_rejected_total'):,.1f}/s refused",
        f"lines      in {rate('rat_lines_received_total'):,.1f}/s"
        f"   out {rate('rat_lines_delivered_total'):,.1f}/s",
        f"bytes      in {human_rate(rate('rat_bytes_received_total'))}"
        f"   out {human_rate(rate('rat_bytes_sent_total'))}",
        f"queued     {human_bytes(new.value('rat_queued_bytes'))}"
        f"   lag p50 <= {human_seconds(quantile(lag, 0.5))}"
        f"   p99 <= {human_seconds(quantile(lag, 0.99))}"
        f"   max <= {human_seconds(quantile(lag, 1.0))}",
        f"loop       {turn_count:,.0f} turns/s   busy {busy * 100:.0f}%"
        f"   turn p50 <= {human_seconds(quantile(turns, 0.5))}"
        f"   p99 <= {human_seconds(quantile(turns, 0.99))}",
    ]
    closed = new.by_label("rat_disconnects_total", "reason")
    gone = "  ".join(f"{reason} {n:,.0f}" for reason, n in sorted(closed.items()) if n)
    lines.append(f"closed     {gone or 'none yet'} (since start)")
    lines += ["", *client_table(new.clients)]
    return [line[:width] for line in lines] if width else lines


def client_table(view: dict[str, Any]) -> list[str]:
    """The laggiest clients, one line each."""
    rows = [c for c in view.get("clients", []) if c.get("queued_bytes") or c.get("lag_seconds")]
    title = f"laggiest clients (of {view.get('count', 0):,})"
    if not rows:
        return [title, "  no client is behind: nothing is queued for anyone"]
    addr_width = max(15, min(40, max(len(str(c.get("addr", ""))) for c in rows)))
    header = (
        f"{'ID':>7} {'ADDRESS':<{addr_width}} {'TRANSPORT':<9} {'ROOM':<12} {'NICK':<12}"
        f" {'QUEUED':>10} {'LAG':>9} {'DRAIN':>12}  CUT IN"
    )
    return [title, header, *(client_row(c, addr_width) for c in rows)]


def client_row(c: dict[str, Any], addr_width: int) -> str:
    return (
        f"{c.get('id') or '-':>7} {c.get('addr', '')!s:<{addr_width}}"
        f" {c.get('transport', '')!s:<9} {c.get('room') or '-'!s:<12.12}"
        f" {c.get('nick') or '-'!s:<12.12} {human_bytes(c.get('queued_bytes') or 0):>10}"
        f" {human_seconds(c.get('lag_seconds') or 0.0):>9}"
        f" {human_rate(c.get('drain_bytes_per_second')):>12}  {cut_in(c)}"
    )


def cut_in(client: dict[str, Any]) -> str:
    """'12.3 s (write timeout)': the sooner of the two limits, if either is on course."""
    candidates = [
        (client.get("until_max_pending_seconds"), "max pending"),
        (client.get("until_write_timeout_seconds"), "write timeout"),
    ]
    known = [(when, why) for when, why in candidates if when is not None]
    if not known:
        return "-"
    when, why = min(known, key=lambda pair: float(pair[0]))
    return f"{float(when):.1f} s ({why})"


def run(
    *,
    host: str,
    port: int,
    interval: float,
    clients: int,
    once: bool,
    out: TextIO = sys.stdout,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """`rat top`: frames until Ctrl-C (or one with --once); 1 if the server cannot be reached."""
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        previous = fetch(host, port, clients)
    except (OSError, ValueError) as err:
        print(f"rat top: cannot read the admin endpoint at {address}: {err}", file=sys.stderr)
        return 1
    live = not once and out.isatty()
    if live:
        out.write("\x1b[?25l")  # hide the cursor while frames are redrawn
    try:
        while True:
            sleep(interval)
            try:
                current = fetch(host, port, clients)
            except (OSError, ValueError) as err:
                if once:
                    print(f"rat top: cannot read {address}: {err}", file=sys.stderr)
                    return 1
                out.write(f"rat top: cannot read {address}: {err} (retrying)\n")
                out.flush()
                continue
            # A terminal gets lines cut to its width, and no more lines than
            # it has rows less one (the last line's newline must not scroll
            # the frame's top away); a pipe or a file, whole frames.
            size = shutil.get_terminal_size() if live else None
            frame = render_frame(address, previous, current, size.columns if size else None)
            if size is not None:
                frame = frame[: max(1, size.lines - 1)]
            previous = current
            if once:
                out.write("\n".join(frame) + "\n")
                return 0
            if live:
                # Home, each line cleared to its end, then the rest of the screen.
                out.write("\x1b[H" + "".join(f"{line}\x1b[K\n" for line in frame) + "\x1b[J")
            else:
                out.write("\n".join(frame) + "\n\n")
            out.flush()
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        # Whoever read our output has gone (`rat top | head`): stop quietly,
        # and let nothing more be written to the closed pipe at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
        return 0
    finally:
        if live:
            out.write("\x1b[?25h\n")
            out.flush()

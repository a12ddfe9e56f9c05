"""Why a run cannot go on, said as a sentence a user can act on.

`BenchError` carries that sentence; the command prints it after `rat bench:`
and exits 3.  A server that refuses a connection says so in one of two ways:
an `ERR ...` line before closing (rat: `ERR server full`, `ERR server busy`)
or a close right after accepting.  `refusal()` turns what such a connection
received into the message, so that a full server is reported as full, not as
the broken pipe it later causes.
"""

from __future__ import annotations


class BenchError(Exception):
    """The run cannot go on (connection refused, server rejected us, timeout)."""


def refusal(data: bytes, which: str) -> str | None:
    """The message for a connection that got `data` (b"": closed) before anything else.

    `which` names the connection ("connection 10001 of 10001", "the probe
    connection").  None when `data` is not a refusal.
    """
    if not data:
        return (
            f"server full? the server closed {which} right after accepting it"
            " (its connection limit may be lower than what this run opens; see --help)"
        )
    if data.startswith((b"ERR ", b"-ERR ")):  # rat's ERR line, a Redis error reply
        line = data.split(b"\n", 1)[0].decode(errors="replace").strip()
        kind = line.split(" ", 1)[1].strip() or "refused"
        return f"{kind}: the server refused {which} with {line!r}"
    return None

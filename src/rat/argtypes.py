"""Argument types for the command line: numbers with bounds and clear errors.

Each factory returns a function for argparse's `type=`: it turns the text into
a number or raises `ArgumentTypeError`, which argparse reports as a usage
error (exit status 2) naming the option.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def whole_number(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An int in [minimum, maximum] (no upper bound if maximum is None)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}: {text!r}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum}: {text!r}")
        return value

    return parse


def real_number(
    above: float | None = None, at_least: float | None = None, maximum: float = math.inf
) -> Callable[[str], float]:
    """A finite float: > `above` or >= `at_least`, and <= `maximum`."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number: {text!r}")
        if above is not None and not value > above:
            raise argparse.ArgumentTypeError(f"must be more than {above:g}: {text!r}")
        if at_least is not None and value < at_least:
            raise argparse.ArgumentTypeError(f"must be at least {at_least:g}: {text!r}")
        if value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum:g}: {text!r}")
        return value

    return parse


def host_and_port(text: str) -> tuple[str, int]:
    """'[HOST:]PORT' -> (host, port); host is "" when only a port is given.

    IPv6 addresses are written in brackets: '[::1]:8081'.
    """
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = "", text
    elif host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise argparse.ArgumentTypeError(f"write an IPv6 address in brackets: [{host}]:PORT")
    elif not host:
        raise argparse.ArgumentTypeError(f"expected [HOST:]PORT, got {text!r}")
    try:
        port = int(port_text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535: {text!r}")
    return host, port

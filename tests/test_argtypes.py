"""Command-line number types: accepted values, and the usage errors users see."""

from __future__ import annotations

import argparse

import pytest

from rat.argtypes import real_number, whole_number


def test_whole_number_bounds() -> None:
    port = whole_number(0, 65535)
    assert port("0") == 0
    assert port("65535") == 65535
    for bad, why in [("65536", "at most 65535"), ("-1", "at least 0"), ("8o", "whole number")]:
        with pytest.raises(argparse.ArgumentTypeError, match=why):
            port(bad)


def test_real_number_bounds() -> None:
    seconds = real_number(above=0)
    assert seconds("0.5") == 0.5
    for bad, why in [("0", "more than 0"), ("nan", "finite"), ("inf", "finite"), ("x", "number")]:
        with pytest.raises(argparse.ArgumentTypeError, match=why):
            seconds(bad)
    rate = real_number(at_least=0, maximum=10)
    assert rate("0") == 0
    with pytest.raises(argparse.ArgumentTypeError, match="at most 10"):
        rate("11")

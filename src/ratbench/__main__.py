"""`python -m ratbench SCENARIO ...`: the same as `rat bench SCENARIO ...`."""

from __future__ import annotations

import argparse
import sys

from ratbench import add_arguments, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ratbench", formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

"""`python -m rat.bench SCENARIO ...`: the same as `rat bench SCENARIO ...`."""

from __future__ import annotations

import argparse
import sys

from rat.bench import add_arguments, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rat.bench", formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

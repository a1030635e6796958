"""The `rnncells` command line: `rnncells check`."""

import argparse
import sys


def main(argv=None):
    """Entry point of the `rnncells` command; returns the exit status."""
    parser = argparse.ArgumentParser(prog="rnncells", description="Fast, verified LSTM and GRU cells.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check", help="the correctness tiers: reference vs finite differences, backends vs reference")
    args = parser.parse_args(argv)
    if args.command == "check":
        from . import check

        return check.main()
    return 2


if __name__ == "__main__":
    sys.exit(main())

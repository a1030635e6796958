"""The `rnncells` command line: `rnncells demo`, `rnncells check`."""

import argparse
import sys


def main(argv=None):
    """Entry point of the `rnncells` command; returns the exit status."""
    parser = argparse.ArgumentParser(prog="rnncells", description="Fast, verified LSTM and GRU cells.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check", help="the correctness tiers: reference vs finite differences, backends vs reference")
    demo = sub.add_parser("demo", help="train an LSTM and a GRU on the adding problem (GPU if present, else NumPy)")
    demo.add_argument("--cell", choices=("lstm", "gru", "both"), default="both")
    demo.add_argument("--seq-len", type=_positive, default=50, help="sequence length T (default 50)")
    demo.add_argument("--steps", type=_positive, default=2000, help="training steps per cell (default 2000)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--plot", metavar="PNG", help="write the loss curves here (needs matplotlib)")
    args = parser.parse_args(argv)
    if args.command == "check":
        from . import check

        return check.main()
    from . import demo

    cells = ("lstm", "gru") if args.cell == "both" else (args.cell,)
    demo.main(cells, seq_len=args.seq_len, steps=args.steps, seed=args.seed, plot_path=args.plot)
    return 0


def _positive(text):
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return n


if __name__ == "__main__":
    sys.exit(main())

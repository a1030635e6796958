"""The `rnncells` command line: `rnncells demo`, `rnncells check`, `rnncells bench`."""

import argparse
import functools
import sys


def main(argv=None):
    """Entry point of the `rnncells` command; returns the exit status."""
    parser = argparse.ArgumentParser(prog="rnncells", description="Fast, verified LSTM and GRU cells.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check", help="the correctness tiers: reference vs finite differences, backends vs reference")
    demo = sub.add_parser("demo", help="train an LSTM and a GRU on the adding problem (GPU if present, else NumPy)")
    demo.add_argument("--cell", choices=("lstm", "gru", "both"), default="both")
    demo.add_argument("--seq-len", type=_at_least(2, "the adding problem marks two steps"), default=50,
                      help="sequence length T, at least 2 (default 50)")
    demo.add_argument("--steps", type=_positive, default=2000, help="training steps per cell (default 2000)")
    demo.add_argument("--seed", type=_at_least(0, "a NumPy seed"), default=0, help="(default 0)")
    demo.add_argument("--plot", metavar="PNG", type=_plot_path, help="write the loss curves here (needs matplotlib)")
    bench = sub.add_parser("bench", help="time rnncells next to torch.nn (cuDNN) and a torch cell loop")
    bench.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda when a GPU is present")
    bench.add_argument("--preset", choices=("full", "quick", "cpu"),
                       help="default: full on a GPU, quick on the CPU (cpu: quick and the standard T=100, B=64, H=512)")
    bench.add_argument("--cell", choices=("lstm", "gru", "both"), default="both")
    bench.add_argument("--group", choices=("standard", "small", "large", "variants"), action="append",
                       help="full preset only: shapes to time (repeatable; default all, the standard first)")
    bench.add_argument("--mode", choices=("forward", "train", "both"), default="both")
    bench.add_argument("--precision", choices=("fp32", "tf32", "fp16", "bf16", "fp64"), action="append",
                       help="repeatable; default fp32, tf32, fp16 and bf16 on a GPU, fp32 and fp64 on the CPU")
    bench.add_argument("--threads", type=_positive, action="append",
                       help="CPU only: threads for both sides, a row each (repeatable; default 1 and 2)")
    bench.add_argument("--passes", type=_positive, default=2, help="times each configuration is measured (default 2)")
    bench.add_argument("--repeats", type=_positive, default=20, help="timed calls per measurement (default 20)")
    bench.add_argument("--warmup", type=_at_least(0), default=5, help="untimed calls first (default 5)")
    bench.add_argument("--out", default="bench/results", help="folder for the JSON record (default bench/results)")
    bench.add_argument("--plot", metavar="PNG", type=_plot_path,
                       help="write a plot of the ratios here (needs matplotlib)")
    args = parser.parse_args(argv)
    if args.command == "check":
        from . import check

        return check.main()
    if args.command == "bench":
        return _bench(args)
    from . import demo

    cells = ("lstm", "gru") if args.cell == "both" else (args.cell,)
    demo.main(cells, seq_len=args.seq_len, steps=args.steps, seed=args.seed, plot_path=args.plot)
    return 0


def _bench(args):
    from . import bench
    from ._backends import gpu_available

    device = args.device or ("cuda" if gpu_available() else "cpu")
    if device == "cuda" and not gpu_available():
        print("rnncells bench --device cuda: no CUDA GPU (or no CuPy) here", file=sys.stderr)
        return 2
    preset = args.preset or ("full" if device == "cuda" else "quick")
    both = lambda choice, all_: all_ if choice == "both" else (choice,)  # noqa: E731
    cells, modes = both(args.cell, ("lstm", "gru")), both(args.mode, ("forward", "train"))
    precisions = tuple(args.precision or bench.DEVICE_PRECISIONS[device])
    if not set(precisions) <= set(bench.DEVICE_PRECISIONS[device]):
        print(f"rnncells bench --precision {' '.join(precisions)}: the {device} bench times "
              f"{', '.join(bench.DEVICE_PRECISIONS[device])}", file=sys.stderr)
        return 2
    if args.threads and device == "cuda":
        print("rnncells bench --threads: CPU only", file=sys.stderr)
        return 2
    threads = tuple(args.threads or bench.CPU_THREADS)
    groups = tuple("small batch" if g == "small" else g for g in args.group) if args.group else bench.GROUPS
    settings = dict(preset=preset, cells=cells, groups=groups, modes=modes, precisions=precisions,
                    threads=threads if device == "cpu" else None, repeats=args.repeats, warmup=args.warmup,
                    passes=args.passes)
    path = bench.record_path(args.out, device)
    # the record rewritten after every row: a run cut off keeps what it measured
    on_row = functools.partial(bench.write_json, path, device, settings=settings)
    out = functools.partial(print, flush=True)
    _, rows = bench.run(preset, cells, device, modes=modes, repeats=args.repeats, warmup=args.warmup,
                        passes=args.passes, out=out, groups=groups, precisions=precisions,
                        on_row=on_row, threads=threads)
    print(f"results written to {path}")
    if args.plot:
        bench.plot(rows, args.plot)
        print(f"ratios plotted to {args.plot}")
    return 0


# Every argument is checked here, when argparse reads it, so that no command fails after its work.


def _positive(text):
    n = _integer(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return n


def _at_least(low, why=""):
    def parse(text):
        n = _integer(text)
        if n < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}{f' ({why})' if why else ''}, got {text}")
        return n

    return parse


def _integer(text):
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


def _plot_path(text):
    from . import _plot

    try:
        return _plot.check_path(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


if __name__ == "__main__":
    sys.exit(main())

"""Command line of delve_fast: ``delve-fast demo`` and ``delve-fast report``.

Also reachable as ``python -m delve_fast``. Problems with the user's input
(a missing file, a malformed CSV, an unusable device) end the program with a
one-line message on stderr and exit status 1, never a traceback; argparse's
own usage errors exit with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

PROG = "delve-fast"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of at least 1, got {value}")
    return value


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a share of variance such as 0.95, got {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a share of variance in (0, 1], got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with the ``demo`` and ``report`` sub-commands.

    Returns
    -------
    argparse.ArgumentParser
        The parser; ``args.command`` names the sub-command.
    """
    from delve_fast.report import STAT_LABELS

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="delve_fast: layer saturation tracking for PyTorch, a faster drop-in for delve.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    demo = sub.add_parser(
        "demo",
        help="train a small CNN on scikit-learn's digits with the tracker on",
        description=(
            "Train a small CNN (4 conv + 3 linear layers) on scikit-learn's bundled 8x8 handwritten digits, "
            "with a training and an evaluation pass per epoch and SaturationTracker recording saturation and "
            "intrinsic dimensionality. Writes delve's CSV and per-epoch plots, plus a heat map of all epochs, "
            "and prints a per-layer table."
        ),
    )
    demo.add_argument("--epochs", type=_positive_int, default=5, help="number of epochs (default: 5)")
    demo.add_argument("--device", default="cpu", help="torch device for model and tracker (default: cpu)")
    demo.add_argument(
        "--backend",
        choices=("auto", "cpp", "torch"),
        default="auto",
        help="tracker backend: compiled ops if available (auto), compiled only (cpp), or pure torch (default: auto)",
    )
    demo.add_argument(
        "--output", type=Path, default=Path("runs/demo"), help="folder for every file written (default: runs/demo)"
    )
    demo.add_argument(
        "--subset",
        type=_positive_int,
        default=None,
        metavar="N",
        help="use only N of the 1797 images, for quick checks (default: all)",
    )
    demo.add_argument("--batch-size", type=_positive_int, default=32, help="mini-batch size (default: 32)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    demo.add_argument(
        "--threads",
        type=_positive_int,
        default=1,
        help="CPU threads for torch during the run; the model is tiny, so 1 is fastest (default: 1)",
    )
    demo.add_argument("--no-progress", action="store_true", help="hide the tqdm progress bars")

    report = sub.add_parser(
        "report",
        help="summarise a delve-format CSV: per-layer table and a layers x epochs heat map",
        description=(
            "Read a CSV written by SaturationTracker's csv or plot writer (delve 0.1.50 or delve_fast), print the "
            "final value of every statistic per layer, and draw one statistic for all layers and epochs as a heat map. "
            "With saved eigenvalue spectra it also draws them and can recompute idim and saturation at another "
            "threshold."
        ),
    )
    report.add_argument("csv", type=Path, metavar="RUN.csv", help="the delve-format CSV file")
    report.add_argument(
        "--output", type=Path, default=None, help="folder for the heat map PNG (default: the CSV's folder)"
    )
    report.add_argument(
        "--stat",
        choices=tuple(STAT_LABELS),
        default=None,
        help="statistic to draw; it must be in the CSV (default: saturation, or the first one recorded if it is absent)",
    )
    report.add_argument(
        "--threshold",
        type=_share,
        default=None,
        metavar="SHARE",
        help="recompute idim and saturation at this share of variance (e.g. 0.95) from the eigenvalue spectra the "
        "run saved (stat 'spectrum' with the npy writer)",
    )
    report.add_argument(
        "--spectra",
        type=Path,
        default=None,
        metavar="DIR",
        help="the run's npy folder holding the saved spectra (default: the CSV path without .csv)",
    )
    return parser


def _version() -> str:
    try:
        from delve_fast import __version__

        return __version__
    except Exception:  # pragma: no cover - only when the package is broken
        return "unknown"


def _fail(message: str) -> int:
    text = " ".join(str(message).split())
    print(f"{PROG}: error: {text}", file=sys.stderr)
    return 1


def _run_report(args: argparse.Namespace) -> int:
    from delve_fast.report import ReportError, report

    try:
        text, png = report(args.csv, args.output, stat=args.stat, threshold=args.threshold, spectra_dir=args.spectra)
    except ReportError as exc:
        return _fail(str(exc))
    print(text)
    print(f"heat map written to {png}")
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    from delve_fast.demo import DemoConfig, DemoError, run_demo
    from delve_fast.report import ReportError

    config = DemoConfig(
        epochs=args.epochs,
        device=args.device,
        backend=args.backend,
        output=args.output,
        subset=args.subset,
        batch_size=args.batch_size,
        seed=args.seed,
        progress=not args.no_progress,
        threads=args.threads,
    )
    try:
        run_demo(config)
    except (DemoError, ReportError) as exc:
        return _fail(str(exc))
    except BrokenPipeError:
        raise
    except OSError as exc:
        where = exc.filename or args.output
        return _fail(f"{where}: {exc.strerror or exc}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``delve-fast`` console script.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name; default ``sys.argv[1:]``.

    Returns
    -------
    int
        Exit status: 0 on success, 1 for a problem with the input, 2 for a usage
        error (argparse exits with 2 itself through ``SystemExit``).
    """
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo":
            return _run_demo(args)
        return _run_report(args)
    except KeyboardInterrupt:
        return _fail("interrupted")
    except BrokenPipeError:
        # The reader of our output went away (e.g. `| head`); stop quietly, as other CLI tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The ``polyact`` command.

Each subcommand parses its arguments here and calls the library; errors in what the user gave
(bad values, missing files) print one line saying what to fix and exit with status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, Sequence

import numpy as np

from .activations import available_activations
from .fit import METHODS, fit, fit_to_tolerance

EXIT_USAGE = 2


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def _add_fit(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fit",
        help="fit a polynomial to an activation and print it",
        formatter_class=_formatter,
        description="Fit a polynomial (Chebyshev basis) to an activation on an interval.",
        epilog=(
            "examples:\n"
            "  polyact fit relu --interval -5 5 --degree 15\n"
            "  polyact fit gelu --interval -8 8 --degree 31 --method chebyshev --json\n"
            "  polyact fit silu --interval -6 6 --tolerance 1e-3 --plot silu.png\n"
            "  polyact fit relu --interval -1 1 --method composite --alpha 10\n\n"
            f"activations: {', '.join(available_activations())}"
        ),
    )
    p.add_argument("activation", help="activation name (see the list below)")
    p.add_argument("--interval", nargs=2, type=float, metavar=("A", "B"), required=True,
                   help="fitting interval [A, B]")
    p.add_argument("--degree", type=int, help="polynomial degree")
    p.add_argument("--tolerance", type=float, help="instead of --degree: lowest degree with max error <= this")
    p.add_argument("--method", choices=METHODS, default="minimax", help="fitting method (default: minimax)")
    p.add_argument("--alpha", type=float, help="composite: sign precision in bits")
    p.add_argument("--eps", type=float, help="composite: half-width of the gap around 0 (default 2^-alpha)")
    p.add_argument("--json", action="store_true", help="print the polynomial as JSON")
    p.add_argument("--plot", metavar="PNG", help="draw function, polynomial and error to this file")
    p.set_defaults(run=_run_fit)


def _run_fit(args: argparse.Namespace) -> int:
    if args.tolerance is not None:
        poly = fit_to_tolerance(args.activation, args.interval, args.tolerance, args.method)
    elif args.method == "composite":
        poly = fit(args.activation, args.interval, args.degree, "composite", alpha=args.alpha, eps=args.eps)
    elif args.degree is None:
        raise ValueError("give --degree N or --tolerance T")
    else:
        poly = fit(args.activation, args.interval, args.degree, args.method)
    if args.plot:
        from .plots import plot_fit

        plot_fit(poly, args.activation, args.plot)
    if args.json:
        print(poly.to_json())
        return 0
    a, b = poly.interval
    print(f"{args.activation} on [{a:g}, {b:g}]: {poly.method}, degree {poly.degree}, depth {poly.depth}")
    print(f"max error: {poly.max_error:.6e}")
    if hasattr(poly, "coef"):
        print(f"Chebyshev coefficients (T_k of t = (2x - {a + b:g}) / {b - a:g}):")
        print("  " + np.array2string(poly.coef, precision=8, separator=", ", max_line_width=100))
        print("monomial coefficients (x^0, x^1, ...):")
        print("  " + np.array2string(poly.to_monomial(), precision=8, separator=", ", max_line_width=100))
    else:
        print(f"stages: {[s.degree for s in poly.stages]}, product: {poly.product}, "
              f"sign precision: {poly.alpha:.2f} bits")
    if args.plot:
        print(f"plot written to {args.plot}")
    return 0


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_fit]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="polyact",
        formatter_class=_formatter,
        description="Polynomial neural networks for privacy-preserving (CKKS) inference.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"polyact {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())

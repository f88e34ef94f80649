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


def _command(sub: argparse._SubParsersAction, name: str, summary: str, description: str,
             examples: Sequence[str], footer: str = "") -> argparse.ArgumentParser:
    """A subcommand parser whose help ends with examples."""
    epilog = "examples:\n" + "".join(f"  {line}\n" for line in examples) + (f"\n{footer}" if footer else "")
    return sub.add_parser(name, help=summary, description=description, epilog=epilog, formatter_class=_formatter)


def _add_fit(sub: argparse._SubParsersAction) -> None:
    p = _command(
        sub, "fit", "fit a polynomial to an activation and print it",
        "Fit a polynomial (Chebyshev basis) to an activation on an interval.",
        ["polyact fit relu --interval -5 5 --degree 15",
         "polyact fit gelu --interval -8 8 --degree 31 --method chebyshev --json",
         "polyact fit silu --interval -6 6 --tolerance 1e-3 --plot silu.png",
         "polyact fit relu --interval -1 1 --method composite --alpha 10"],
        f"activations: {', '.join(available_activations())}",
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


def _add_data_and_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="digits",
                   help="digits | breast_cancer | FILE.npz | mnist:DIR | fashion_mnist:DIR | cifar10:DIR (default: digits)")
    p.add_argument("--model", default="cnn",
                   help="zoo architecture to train (mlp, cnn, resnet) or a model file saved by polyact (default: cnn)")
    p.add_argument("--factory", help="for a plain state-dict file: the architecture as package.module:function")
    p.add_argument("--factory-kwargs", default="{}", help="JSON keyword arguments for --factory")
    p.add_argument("--activation", default="relu", help="activation of a zoo model (default: relu)")
    p.add_argument("--epochs", type=int, default=20, help="training epochs of a zoo model (default: 20)")
    p.add_argument("--seed", type=int, default=0)


def _load_data_and_model(args: argparse.Namespace):
    import torch

    from .data import load_dataset
    from .models import ARCHITECTURES, build_model, resolve_factory
    from .storage import load_model
    from .trainer import evaluate, train_classifier

    data = load_dataset(args.dataset)
    if args.model in ARCHITECTURES:
        torch.manual_seed(args.seed)
        model = build_model(args.model, data.input_shape, data.num_classes, args.activation)
        train_classifier(model, data, epochs=args.epochs, seed=args.seed, progress=True)
    elif args.factory:
        model = resolve_factory(args.factory)(**json.loads(args.factory_kwargs))
        state = torch.load(args.model, map_location="cpu", weights_only=True)
        model.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
        model.eval()
    else:
        model = load_model(args.model)
    print(f"{args.model} on {data.name}: test accuracy {evaluate(model, data.x_test, data.y_test):.2f}%",
          file=sys.stderr)
    return data, model


def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = _command(
        sub, "convert", "convert a trained model to a PANN and report its cost",
        "Calibrate activation ranges, fit polynomials, and write a PANN file.",
        ["polyact convert --model cnn --dataset digits --degree 15 --out cnn.pann",
         "polyact convert --model mlp --activation gelu --tolerance 1e-2 --method lsq --json",
         "polyact convert --model trained.pt --alpha 8 --out relu_composite.pann",
         "polyact convert --model weights.pt --factory mypkg.nets:Net --dataset data.npz --degree 7"],
    )
    _add_data_and_model(p)
    p.add_argument("--method", choices=("minimax", "chebyshev", "lsq"), default="minimax")
    p.add_argument("--degree", type=int, help="polynomial degree for every activation")
    p.add_argument("--tolerance", type=float, help="max fit error per activation (lowest degree meeting it)")
    p.add_argument("--alpha", type=float, help="composite sign precision in bits (relu/abs)")
    p.add_argument("--margin", type=float, default=0.1, help="interval margin beyond the observed range (default 0.1)")
    p.add_argument("--per-channel", action="store_true", help="one polynomial per channel")
    p.add_argument("--maxpool", choices=("avg", "error"), default="avg", help="replace max pooling by average pooling (default) or fail")
    p.add_argument("--out", help="write the PANN to this file")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(run=_run_convert)


def _run_convert(args: argparse.Namespace) -> int:
    from .convert import convert
    from .storage import save_pann
    from .trainer import evaluate

    data, model = _load_data_and_model(args)
    pann, report = convert(model, data, method=args.method, degree=args.degree, tolerance=args.tolerance,
                           alpha=args.alpha, margin=args.margin, per_channel=args.per_channel,
                           maxpool=args.maxpool, progress=True)
    if args.out:
        save_pann(pann, args.out, input_shape=data.input_shape)
    if args.json:
        print(json.dumps({**report.to_dict(), "pann_accuracy": evaluate(pann, data.x_test, data.y_test)}))
        return 0
    print(report.table())
    print(f"PANN test accuracy: {evaluate(pann, data.x_test, data.y_test):.2f}%")
    if args.out:
        print(f"PANN written to {args.out}")
    return 0


def _add_tradeoff(sub: argparse._SubParsersAction) -> None:
    p = _command(
        sub, "tradeoff", "sweep methods x degrees x margins and report accuracy vs depth",
        "Convert a model at many precisions and compare accuracy, agreement and depth.",
        ["polyact tradeoff --model cnn --activation relu --degrees 3 7 15 31 --plot tradeoff.png",
         "polyact tradeoff --model mlp --activation gelu --methods minimax lsq --csv out.csv",
         "polyact tradeoff --model cnn --alphas 4 6 8 --methods minimax --degrees 7 15"],
    )
    _add_data_and_model(p)
    p.add_argument("--methods", nargs="+", default=["minimax", "chebyshev", "lsq"],
                   choices=("minimax", "chebyshev", "lsq"))
    p.add_argument("--degrees", nargs="+", type=int, default=[3, 7, 15, 31])
    p.add_argument("--alphas", nargs="*", type=float, default=[], help="composite precisions (relu models)")
    p.add_argument("--margins", nargs="+", type=float, default=[0.1])
    p.add_argument("--csv", help="write the rows as CSV to this file")
    p.add_argument("--plot", metavar="PNG", help="draw accuracy vs depth to this file")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(run=_run_tradeoff)


def _run_tradeoff(args: argparse.Namespace) -> int:
    from .tradeoff import sweep

    data, model = _load_data_and_model(args)
    result = sweep(model, data, methods=args.methods, degrees=args.degrees, alphas=args.alphas,
                   margins=args.margins, name=f"{args.model}/{args.activation}/{data.name}")
    if args.csv:
        with open(args.csv, "w") as fh:
            fh.write(result.to_csv())
    if args.plot:
        from .plots import plot_tradeoff

        plot_tradeoff(result, args.plot)
    if args.json:
        print(result.to_json())
        return 0
    print(result.table())
    best = result.cheapest(1.0)
    if best is None:
        print("no setting stays within 1 point of the original accuracy")
    else:
        print(f"cheapest within 1 point: {best.method}, degree {best.degree}, alpha {best.alpha}, depth {best.depth}, "
              f"accuracy {best.accuracy:.2f}%")
    return 0


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_fit, _add_convert, _add_tradeoff]


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
    except (ValueError, FileNotFoundError, KeyError, RuntimeError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"polyact {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())

"""The ``polyact`` command.

Each subcommand parses its arguments here and calls the library; errors in what the user gave
(bad values, missing files) print one line saying what to fix and exit with status 2.
Building the parser imports nothing heavy (no torch, TenSEAL, FastAPI or matplotlib): each
command imports what it needs when it runs, so ``polyact --help`` starts at once.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from typing import Callable, Sequence

from . import encrypted
from . import tune as tune_verb
from .options import DATASET_HELP

EXIT_USAGE = 2
# polyact.approx.fitting.METHODS and some activation names, written out so that building the parser
# does not import torch (tests/test_startup.py checks them against the library)
FIT_METHODS = ("minimax", "chebyshev", "lsq", "composite")
CONVERT_METHODS = FIT_METHODS[:3]
COMMON_ACTIVATIONS = ("relu", "gelu", "silu", "sigmoid", "tanh", "softplus", "square")


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def _command(sub: argparse._SubParsersAction, name: str, summary: str, description: str,
             examples: Sequence[str], footer: str = "") -> argparse.ArgumentParser:
    """A subcommand parser whose help ends with examples."""
    epilog = "examples:\n" + "".join(f"  {line}\n" for line in examples) + (f"\n{footer}" if footer else "")
    p = sub.add_parser(name, help=summary, description=description, epilog=epilog, formatter_class=_formatter)
    p.add_argument("--threads", type=int, metavar="N",
                   help="torch / BLAS threads (default: $POLYACT_THREADS, else chosen for the model and the free "
                        "cores: 1 for networks as small as the digits CNN; see polyact.threads)")
    return p


def _add_fit(sub: argparse._SubParsersAction) -> None:
    p = _command(
        sub, "fit", "fit a polynomial to an activation and print it",
        "Fit a polynomial (Chebyshev basis) to an activation on an interval.",
        ["polyact fit relu --interval -5 5 --degree 15",
         "polyact fit gelu --interval -8 8 --degree 31 --method chebyshev --json",
         "polyact fit silu --interval -6 6 --tolerance 1e-3 --plot silu.png",
         "polyact fit relu --interval -1 1 --method composite --alpha 10"],
        f"activations: {', '.join(COMMON_ACTIVATIONS)}, ... (any name of polyact.available_activations();\n"
        "an unknown name prints them all)",
    )
    p.add_argument("activation", help="activation name (see the list below)")
    p.add_argument("--interval", nargs=2, type=float, metavar=("A", "B"), required=True,
                   help="fitting interval [A, B]")
    p.add_argument("--degree", type=int, help="polynomial degree")
    p.add_argument("--tolerance", type=float, help="instead of --degree: lowest degree with max error <= this")
    p.add_argument("--method", choices=FIT_METHODS, default="minimax", help="fitting method (default: minimax)")
    p.add_argument("--alpha", type=float, help="composite: sign precision in bits")
    p.add_argument("--eps", type=float, help="composite: half-width of the gap around 0 (default 2^-alpha)")
    p.add_argument("--json", action="store_true", help="print the polynomial as JSON")
    p.add_argument("--plot", metavar="PNG", help="draw function, polynomial and error to this file")
    p.set_defaults(run=_run_fit)


def _run_fit(args: argparse.Namespace) -> int:
    import numpy as np

    from ..approx.fitting import fit, fit_to_tolerance

    if args.tolerance is not None:
        poly = fit_to_tolerance(args.activation, args.interval, args.tolerance, args.method)
    elif args.method == "composite":
        poly = fit(args.activation, args.interval, args.degree, "composite", alpha=args.alpha, eps=args.eps)
    elif args.degree is None:
        raise ValueError("give --degree N or --tolerance T")
    else:
        poly = fit(args.activation, args.interval, args.degree, args.method)
    if args.plot:
        from ..plots import plot_fit

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
    p.add_argument("--dataset", default="digits", help=DATASET_HELP)
    p.add_argument("--model", default="cnn",
                   help="zoo architecture to train (mlp, cnn, resnet) or a model / PANN file saved by polyact (default: cnn)")
    p.add_argument("--factory", help="the architecture of a state-dict file, or of a polyact file naming a factory "
                                     "outside polyact: package.module:function (current directory importable) "
                                     "or path/to/file.py:function; runs that code, so name only code you trust")
    p.add_argument("--factory-kwargs", default="{}", help="JSON keyword arguments for --factory")
    p.add_argument("--activation", default="relu", help="activation of a zoo model (default: relu)")
    p.add_argument("--epochs", type=int, default=20, help="training epochs of a zoo model (default: 20)")
    p.add_argument("--seed", type=int, default=0, help="seed of training and data order (default: 0)")


def _load_data_and_model(args: argparse.Namespace):
    import torch

    from ..convert.storage import file_format, is_torchscript, load_model, load_pann
    from ..data import load_dataset
    from ..models import ARCHITECTURES, FACTORY_ATTR, build_model, resolve_factory
    from ..threads import configure_threads
    from ..train.loop import evaluate, train_classifier

    data = load_dataset(args.dataset)
    if args.model in ARCHITECTURES:
        torch.manual_seed(args.seed)
        model = build_model(args.model, data.input_shape, data.num_classes, args.activation)
        configure_threads(model, data.input_shape, threads=args.threads)
        train_classifier(model, data, epochs=args.epochs, seed=args.seed, progress=True,
                         optimizer=getattr(args, "optimizer", "adamw"), lr=getattr(args, "lr", 3e-3),
                         weight_decay=getattr(args, "weight_decay", 0.0))
    elif is_torchscript(args.model):  # told from the zip layout: TorchScript's code never runs
        raise ValueError(f"{args.model} is TorchScript: its compiled code cannot be rewritten into a PANN (and is not "
                         "read); save the state dict and give --factory package.module:function")
    else:
        try:
            kind = file_format(args.model)
        except ValueError as exc:
            if args.factory:  # a plain state dict of the user's architecture
                kwargs = json.loads(args.factory_kwargs)
                model = resolve_factory(args.factory)(**kwargs)
                state = torch.load(args.model, map_location="cpu", weights_only=True)
                model.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
                setattr(model, FACTORY_ATTR, (args.factory, kwargs))  # saved with the PANN
                model.eval()
            else:
                raise ValueError(f"{exc}; for a plain state dict give --factory package.module:function") from exc
        else:
            model = (load_pann if kind == "pann" else load_model)(args.model, factory=args.factory)
        configure_threads(model, data.input_shape, threads=args.threads)
    print(f"{args.model} on {data.name}: test accuracy {evaluate(model, data.x_test, data.y_test):.2f}%",
          file=sys.stderr)
    return data, model


def _input_range(data) -> tuple[float, float]:
    """The range of the training inputs: what the PANN was calibrated for (kept in its file)."""
    return float(data.x_train.min()), float(data.x_train.max())


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
    p.add_argument("--method", choices=CONVERT_METHODS, default="minimax", help="fitting method (default: minimax)")
    p.add_argument("--degree", type=int, help="polynomial degree for every activation")
    p.add_argument("--tolerance", type=float, help="max fit error per activation (lowest degree meeting it)")
    p.add_argument("--alpha", type=float, help="composite sign precision in bits (relu/abs)")
    p.add_argument("--margin", type=float, default=0.1, help="interval margin beyond the observed range (default 0.1)")
    p.add_argument("--per-channel", action="store_true", help="one polynomial per channel")
    p.add_argument("--maxpool", choices=("poly", "avg", "error"), default="poly",
                   help="max pooling as a tree of polynomial max(a, b) (default, faithful), replaced by average "
                        "pooling (opt-in; the accuracy change is measured and printed), or refused")
    p.add_argument("--out", help="write the PANN to this file")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(run=_run_convert)


def _run_convert(args: argparse.Namespace) -> int:
    from ..convert.pipeline import convert
    from ..convert.storage import save_pann
    from ..train.loop import evaluate

    data, model = _load_data_and_model(args)
    pann, report = convert(model, data, method=args.method, degree=args.degree, tolerance=args.tolerance,
                           alpha=args.alpha, margin=args.margin, per_channel=args.per_channel,
                           maxpool=args.maxpool, progress=True)
    if args.out:
        save_pann(pann, args.out, input_shape=data.input_shape, input_range=_input_range(data))
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
                   choices=CONVERT_METHODS, help="fitting methods to compare (default: all three)")
    p.add_argument("--degrees", nargs="+", type=int, default=[3, 7, 15, 31], help="degrees (default: 3 7 15 31)")
    p.add_argument("--alphas", nargs="*", type=float, default=[], help="composite precisions (relu models)")
    p.add_argument("--margins", nargs="+", type=float, default=[0.1],
                   help="interval margins beyond the observed range (default: 0.1)")
    p.add_argument("--max-loss", type=float, default=1.0,
                   help="accuracy budget in points for the cheapest setting (default: 1)")
    p.add_argument("--csv", help="write the rows as CSV to this file")
    p.add_argument("--plot", metavar="PNG",
                   help="draw accuracy vs depth (points labelled, cheapest setting starred) to this file")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(run=_run_tradeoff)


def _run_tradeoff(args: argparse.Namespace) -> int:
    from ..tradeoff import sweep

    data, model = _load_data_and_model(args)
    result = sweep(model, data, methods=args.methods, degrees=args.degrees, alphas=args.alphas,
                   margins=args.margins, name=f"{args.model}/{args.activation}/{data.name}")
    if args.csv:
        with open(args.csv, "w") as fh:
            fh.write(result.to_csv())
    if args.plot:
        from ..plots import plot_tradeoff

        plot_tradeoff(result, args.plot, args.max_loss)
    if args.json:
        print(result.to_json())
        return 0
    print(result.table())
    best = result.cheapest(args.max_loss)
    if best is None:
        print(f"no setting stays within {args.max_loss:g} points of the original accuracy")
    else:
        print(f"cheapest within {args.max_loss:g} points: {best.method}, degree {best.degree}, alpha {best.alpha}, "
              f"depth {best.depth}, accuracy {best.accuracy:.2f}%")
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = _command(
        sub, "train", "train a model, or fine-tune it robustly into a low-precision PANN",
        "Without a precision: train a zoo model and save it. With --degree/--bits/--alpha/--tolerance: "
        "fine-tune a model (or PANN) so that its PANN at that precision keeps its accuracy "
        "(see polyact.train), and save the PANN.",
        ["polyact train --model cnn --epochs 20 --out cnn.pt",
         "polyact train --model cnn.pt --degree 2 --out cnn_deg2.pann",
         "polyact train --model cnn.pt --alpha 2 --progressive degree --robust-epochs 40 --out cnn_a2.pann",
         "polyact train --model cnn.pt --bits 5 --perturbation noise --out cnn_noise.pann",
         "polyact train --model cnn_deg2.pann --trainable-coefficients --robust-epochs 10 --out tuned.pann"],
    )
    _add_data_and_model(p)
    p.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw", help="for zoo training")
    p.add_argument("--lr", type=float, default=3e-3, help="learning rate for zoo training")
    p.add_argument("--weight-decay", type=float, default=0.0, help="for zoo training (robust training uses none)")
    p.add_argument("--method", choices=CONVERT_METHODS, default="minimax", help="fitting method (default: minimax)")
    p.add_argument("--degree", type=int, help="target polynomial degree")
    p.add_argument("--bits", type=float, help="target precision: max error 2^-bits max|interval|")
    p.add_argument("--alpha", type=float, help="target composite sign precision (relu)")
    p.add_argument("--tolerance", type=float, help="target max error per activation")
    p.add_argument("--perturbation", choices=("polynomial", "noise", "none"), default="polynomial",
                   help="train through the target polynomials, inject noise of their error, or neither "
                        "(default: polynomial)")
    p.add_argument("--noise-bits", type=float, help="noise magnitude 2^-bits max|interval| (default: the target)")
    p.add_argument("--range-penalty", type=float, default=1.0, help="weight of the out-of-interval penalty")
    p.add_argument("--mixup", type=float, default=0.2, help="mixup Beta parameter (0 disables)")
    p.add_argument("--robust-weight-decay", type=float, default=0.0, help="weight decay while fine-tuning")
    p.add_argument("--progressive", choices=("layers", "degree"), help="replace layers one by one or lower precision stepwise")
    p.add_argument("--trainable-coefficients", action="store_true", help="learn the polynomial coefficients too")
    p.add_argument("--robust-epochs", type=int, default=30, help="fine-tuning epochs (default: 30)")
    p.add_argument("--robust-lr", type=float, default=3e-3, help="fine-tuning learning rate (default: 0.003)")
    p.add_argument("--out", help="write the model (plain training) or the PANN (robust) to this file")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(run=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from ..convert.storage import save_model, save_pann
    from ..nn.poly_act import OutOfRangeWarning, out_of_range_fraction, polyact_layers
    from ..train.loop import evaluate
    from ..train.robust import robust_finetune

    data, model = _load_data_and_model(args)
    targets = {k: getattr(args, k) for k in ("degree", "bits", "alpha", "tolerance")}
    if all(v is None for v in targets.values()) and not polyact_layers(model):
        if args.out:
            save_model(model, args.out)
        accuracy = evaluate(model, data.x_test, data.y_test)
        print(json.dumps({"test_accuracy": accuracy, "out": args.out}) if args.json
              else f"test accuracy {accuracy:.2f}%" + (f"; model written to {args.out}" if args.out else ""))
        return 0
    result = robust_finetune(
        model, data, method=args.method, **targets,
        perturbation=None if args.perturbation == "none" else args.perturbation, noise_bits=args.noise_bits,
        range_penalty=args.range_penalty, mixup=args.mixup, weight_decay=args.robust_weight_decay,
        progressive=args.progressive, trainable_coefficients=args.trainable_coefficients,
        epochs=args.robust_epochs, lr=args.robust_lr, seed=args.seed,
    )
    if args.out:
        save_pann(result.pann, args.out, input_shape=data.input_shape, input_range=_input_range(data))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutOfRangeWarning)  # reported below
        accuracy = evaluate(result.pann, data.x_test, data.y_test)
    outside = out_of_range_fraction(result.pann)
    if args.json:
        print(json.dumps({"test_accuracy": accuracy, "out_of_range": outside, "stages": [vars(s) for s in result.stages],
                          "report": result.report.to_dict() if result.report else None, "out": args.out}))
        return 0
    for stage in result.stages:
        print(f"stage {stage.label}: {stage.epochs} epochs, test accuracy {stage.test_accuracy:.2f}%")
    if result.report is not None:
        print(result.report.table())
    print(f"robust PANN test accuracy: {accuracy:.2f}%; {100 * outside:.3f}% of activation inputs outside "
          "their intervals" + (f"; written to {args.out}" if args.out else ""))
    return 0


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_fit, _add_convert, _add_train, _add_tradeoff]


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="polyact",
        formatter_class=_formatter,
        description="Polynomial neural networks for privacy-preserving (CKKS) inference.",
    )
    parser.add_argument("--version", action="version", version=f"polyact {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in COMMANDS:
        add(sub)
    tune_verb.add(sub, _command, _add_data_and_model, _load_data_and_model)
    for add_encrypted in encrypted.COMMANDS:
        add_encrypted(sub, _command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        from ..threads import configure_threads

        configure_threads(threads=args.threads)  # $POLYACT_THREADS / --threads, else 1 until a model is known
        return args.run(args)
    except (ValueError, FileNotFoundError, KeyError, RuntimeError, ImportError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"polyact {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())

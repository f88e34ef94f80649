"""The encrypted half of the ``polyact`` command: ``demo``, ``compile``, ``encrypt-run``,
``serve`` and ``bench`` (registered in :mod:`polyact.cli`)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .options import DATASET_HELP


def _load_pann_file(path: str, factory: str | None = None):
    from ..convert.storage import INPUT_SHAPE_ATTR, load_pann

    pann = load_pann(path, factory=factory).double().eval()
    shape = getattr(pann, INPUT_SHAPE_ATTR, None)
    if not shape:
        raise ValueError(f"{path} does not record its input shape; re-save it with save_pann(..., input_shape=...)")
    return pann, tuple(shape)


def _compile(args: argparse.Namespace):
    import he_backend

    pann, shape = _load_pann_file(args.pann, args.factory)
    return pann, he_backend.compile(pann, shape, args.packing, min_scale_bits=args.min_scale_bits,
                                    max_levels=args.max_levels,
                                    mask=None if args.sigma is None else he_backend.MaskPolicy(sigma=args.sigma))


def _deployment(args: argparse.Namespace):
    """The server bundle ``args.pann`` names (a bundle file or folder), or one compiled from a
    PANN file; and the plaintext reference (the PANN, or the plan's float64 twin)."""
    from he_backend.protocol.bundle import ServerBundle, is_bundle, load_server_bundle

    from ..convert.storage import INPUT_RANGE_ATTR

    if is_bundle(args.pann):
        bundle = load_server_bundle(args.pann)
        return bundle, bundle.plan.simulate
    pann, plan = _compile(args)

    def reference(x):
        import torch

        with torch.no_grad():
            return pann(torch.as_tensor(x, dtype=torch.float64)).numpy()

    return ServerBundle(plan, getattr(pann, INPUT_RANGE_ATTR, None)), reference


def add_demo(sub, command) -> None:
    p = command(
        sub, "demo", "the whole path on digits: train, convert, robust-train, encrypt, report",
        "Train the digits CNN, convert it at several degrees, fine-tune robustly, compile the cheapest\n"
        "setting within --max-loss points, run encrypted inference on test images and write a\n"
        "report folder (report.md, report.json, PNG plots). No downloads; about 80 s of CPU on one thread\n"
        "(more wall time on a busy machine: the report records wall, CPU seconds and the load).",
        ["polyact demo", "polyact demo --out report --activation gelu --samples 128 --json"],
    )
    p.add_argument("--out", default="polyact-demo", help="report folder (default: polyact-demo)")
    p.add_argument("--activation", default="relu", help="activation of the CNN (default: relu)")
    p.add_argument("--epochs", type=int, default=15, help="training epochs (default: 15)")
    p.add_argument("--degrees", nargs="+", type=int, default=[2, 3, 5, 7, 15], help="degrees to convert at")
    p.add_argument("--max-loss", type=float, default=1.0, help="accuracy points the PANN may lose (default: 1)")
    p.add_argument("--samples", type=int, default=128, help="test images to run encrypted (default: 128)")
    p.add_argument("--json", action="store_true", help="print report.json instead of the summary")
    p.set_defaults(run=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import DemoConfig, run_demo

    start = time.perf_counter()
    result = run_demo(args.out, DemoConfig(activation=args.activation, epochs=args.epochs, degrees=args.degrees,
                                           max_loss=args.max_loss, samples=args.samples,
                                           threads=args.threads))
    if args.json:
        print(json.dumps(result.to_dict(), default=str))
        return 0
    print(result.summary())
    m = result.machine
    print(f"report: {Path(args.out) / 'report.md'} ({time.perf_counter() - start:.0f} s in all, "
          f"{sum(result.cpu_seconds.values()):.0f} s CPU, {m['threads']} thread(s), 1-min load {m['load_start']:.1f} "
          f"at the start, {m['load_end']:.1f} at the end)")
    return 0


def _add_plan_options(p: argparse.ArgumentParser, bundles: bool = True) -> None:
    p.add_argument("pann", help="a PANN file written by `polyact convert --out` or `polyact train --out`"
                   + (", or a bundle folder / server.bundle written by `polyact compile --out`" if bundles else ""))
    p.add_argument("--factory", help="for a PANN whose architecture is not one of polyact's: package.module:function "
                                     "(current directory importable) or path/to/file.py:function; runs that code")
    p.add_argument("--packing", choices=("sample", "batch"), default="sample",
                   help="one sample per ciphertext (latency, default) or many (throughput); a bundle keeps its own")
    p.add_argument("--min-scale-bits", type=int, default=30,
                   help="precision floor: the CKKS scale in bits (default 30; outputs keep ~scale-15 bits)")
    p.add_argument("--max-levels", type=int,
                   help="levels per segment: deeper plans are split into segments joined by interactive "
                        "refresh rounds with the client (default: only when no secure parameters fit)")
    p.add_argument("--sigma", type=int,
                   help="statistical security bits per masked coefficient of the refresh masks (default 64: "
                        "ResNet-20 within 2^-44.6 per image; exact integer masks, no precision cost, "
                        "sigma + 2 + log2(2 scale B) bits of modulus at a cut)")


def add_compile(sub, command) -> None:
    p = command(
        sub, "compile", "compile a PANN into an encrypted-inference plan and print its cost",
        "Choose 128-bit-secure CKKS parameters for the PANN's depth and report depth, parameters,\n"
        "ciphertext sizes and operation counts per layer before anything is encrypted.",
        ["polyact compile cnn.pann", "polyact compile cnn.pann --packing batch --out deploy --json",
         "polyact compile net.pann --factory mynets.tabular:TabNet --out deploy"],
    )
    _add_plan_options(p, bundles=False)
    p.add_argument("--out", help="write the deployment to this folder: server.bundle (plan and weights, for "
                                 "`polyact serve` / `encrypt-run`) and client.bundle (layout and input range, no weights)")
    p.add_argument("--json", action="store_true", help="print the plan report as JSON")
    p.set_defaults(run=_run_compile)


def _run_compile(args: argparse.Namespace) -> int:
    from he_backend.protocol.bundle import save_bundles

    from ..convert.storage import INPUT_RANGE_ATTR

    pann, plan = _compile(args)
    print(json.dumps(plan.report()) if args.json else plan.table())
    if args.out:
        written = save_bundles(plan, args.out, getattr(pann, INPUT_RANGE_ATTR, None))
        print(f"wrote {written[0]} and {written[1]}", file=sys.stderr)
    return 0


def add_encrypt_run(sub, command) -> None:
    p = command(
        sub, "encrypt-run", "run a PANN encrypted on test data and compare with plaintext",
        "Make keys, encrypt test samples, evaluate on a server that holds only the public context\n"
        "(in this process or a pool of --workers processes), decrypt, and report accuracy,\n"
        "agreement with the plaintext PANN, precision in bits and time.",
        ["polyact encrypt-run cnn.pann --dataset digits --samples 64 --packing batch",
         "polyact encrypt-run mlp.pann --samples 360 --packing batch --workers 2 --json",
         "polyact encrypt-run mlp.pann --samples 360 --packing batch --workers 4 --ray-address local"],
    )
    _add_plan_options(p)
    p.add_argument("--dataset", default="digits", help="test data: " + DATASET_HELP)
    p.add_argument("--samples", type=int, default=16, help="test samples to run (default: 16)")
    p.add_argument("--workers", type=int, default=1, help="server processes, or Ray tasks (default: 1)")
    p.add_argument("--ray-address", help="run the chunks as Ray tasks: 'local' starts a local Ray, "
                                         "or 'auto' / a cluster address (pip install 'polyact[ray]')")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(run=_run_encrypt_run)


def _run_encrypt_run(args: argparse.Namespace) -> int:
    from he_backend.eval.metrics import compare
    from he_backend.protocol.parallel import run_encrypted

    from ..data import load_dataset

    bundle, reference = _deployment(args)
    plan = bundle.plan
    data = load_dataset(args.dataset)
    if args.samples < 1:
        raise ValueError("--samples must be >= 1")
    x, y = data.x_test[: args.samples].double().numpy(), data.y_test[: args.samples].numpy()
    result = run_encrypted(plan, x, workers=args.workers, ray_address=args.ray_address)
    figures = {
        "samples": len(x), "packing": plan.packing, "workers": args.workers, "depth": plan.depth,
        "poly_modulus_degree": plan.params.poly_modulus_degree, "scale_bits": plan.params.scale_bits,
        **compare(result.outputs, reference(x), y), **result.seconds, **result.rounds,
    }
    if args.json:
        print(json.dumps(figures))
        return 0
    print(plan.table())
    for key, value in figures.items():
        print(f"{key:>20}: {value:.4g}" if isinstance(value, float) else f"{key:>20}: {value}")
    return 0


def add_serve(sub, command) -> None:
    p = command(
        sub, "serve", "serve a PANN over HTTP for encrypted inference (no secret key on the server)",
        "Start the encrypted-inference service (FastAPI + uvicorn) for a bundle written by\n"
        "`polyact compile --out` (or a PANN, compiled at start). Clients fetch the client bundle, upload\n"
        "their public context once (a session), then post ciphertexts; see he_backend.service.remote.RemoteClient.",
        ["polyact serve deploy/ --port 8000",
         "polyact serve deploy/ --host 0.0.0.0 --token-file tokens.txt --max-memory-gb 8 "
         "--ssl-certfile cert.pem --ssl-keyfile key.pem"],
    )
    _add_plan_options(p)
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="TCP port to listen on (default: 8000)")
    p.add_argument("--session-ttl", type=float, default=900.0, help="seconds an idle session lives (default: 900)")
    p.add_argument("--max-sessions", type=int, default=16, help="sessions held at once (default: 16)")
    p.add_argument("--max-body-mb", type=float, default=128.0, help="largest request body in MB (default: 128)")
    p.add_argument("--max-memory-gb", type=float,
                   help="memory budget in GiB: new sessions beyond it get 503; a quarter of it (at most 2 GiB) "
                        "holds the encoded weights (default: no budget)")
    p.add_argument("--token-file", help="require Authorization: Bearer TOKEN; one 'TOKEN [SESSIONS]' per line, "
                                        "SESSIONS the token's quota (default: --max-sessions)")
    p.add_argument("--ssl-certfile", help="serve HTTPS with this certificate (PEM)")
    p.add_argument("--ssl-keyfile", help="the certificate's private key (PEM)")
    p.set_defaults(run=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from he_backend.service.app import ServiceLimits, create_app
    from he_backend.service.auth import Tokens

    if bool(args.ssl_certfile) != bool(args.ssl_keyfile):
        raise ValueError("HTTPS needs both --ssl-certfile and --ssl-keyfile")
    bundle, _ = _deployment(args)
    print(bundle.plan.table(), file=sys.stderr)
    limits = ServiceLimits(session_ttl=args.session_ttl, max_sessions=args.max_sessions,
                           max_body_bytes=int(args.max_body_mb * 1e6),
                           max_memory_bytes=int(args.max_memory_gb * 2**30) if args.max_memory_gb else None,
                           cache_bytes=min(2 << 30, int(args.max_memory_gb * 2**28)) if args.max_memory_gb else 2 << 30)
    tokens = Tokens.from_file(args.token_file, args.max_sessions) if args.token_file else None
    uvicorn.run(create_app(bundle, limits, tokens), host=args.host, port=args.port, log_level="info",
                ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile)
    return 0


def add_bench(sub, command) -> None:
    p = command(
        sub, "bench", "time encrypted polynomial evaluation per degree on this machine",
        "Evaluate a degree-d Chebyshev series on one full ciphertext (depth-optimal schedule) and\n"
        "print levels, ciphertext products and seconds per degree. The full benchmarks (TenSEAL\n"
        "comparison, networks, service) are scripts in benchmarks/.",
        ["polyact bench", "polyact bench --degrees 7 15 31 63 --scale-bits 40 --json"],
    )
    p.add_argument("--degrees", nargs="+", type=int, default=[3, 7, 15, 31],
                   help="polynomial degrees to time (default: 3 7 15 31)")
    p.add_argument("--scale-bits", type=int, default=40, help="CKKS scale in bits; the ring is the smallest "
                                                               "128-bit-secure one for the depth (default: 40)")
    p.add_argument("--repeat", type=int, default=3, help="evaluations per degree; the median is printed (default: 3)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.add_argument("--profile", metavar="PANN", help="instead: profile a saved PANN's plan on one random input "
                   "(seconds and SEAL calls per step and per primitive)")
    p.set_defaults(run=_run_bench)


def _run_profile(args: argparse.Namespace) -> int:
    import numpy as np

    import he_backend
    from he_backend.protocol.profile import profile

    pann, shape = _load_pann_file(args.profile)
    plan = he_backend.compile(pann, shape, "sample")
    result = profile(plan, np.random.default_rng(0).uniform(-1, 1, shape))
    print(json.dumps(result.to_dict()) if args.json else result.table())
    return 0


def _run_bench(args: argparse.Namespace) -> int:
    from he_backend.protocol.profile import time_polynomial

    if args.profile:
        return _run_profile(args)
    rows = [time_polynomial(d, args.scale_bits, repeat=args.repeat) for d in args.degrees]
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"{'degree':>6} {'levels':>6} {'ct*ct':>6} {'N':>6} {'seconds':>8}")
    for r in rows:
        print(f"{r['degree']:>6} {r['depth']:>6} {r['ct_ct_mults']:>6} {r['N']:>6} {r['seconds']:>8.3f}")
    return 0


COMMANDS = [add_demo, add_compile, add_encrypt_run, add_serve, add_bench]

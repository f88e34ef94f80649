"""ResNet-20 at CIFAR shape (3x32x32, channels 16/32/64, 9 basic blocks), the network of the
low-precision PANN paper, with synthetic data (random weights and random images; no CIFAR here).

Stages, each in its own subprocess so that its peak RSS (``ru_maxrss``) is its own:

* ``compile`` per arm (degree-2 activations; composite ReLU at ``--alpha`` bits): convert
  (calibration on ``--calib`` random images), then compile. ResNet-20 needs ~40 levels and
  N = 32768 allows ~19 without refresh, so compile raises ``ParameterError`` until the plan can
  be split into refresh segments; the stage then measures the structured lowering part of the
  compiler alone (sparse maps, slot layouts, tile diagonals) and reports its diagonal, rotation
  and weight-byte totals. Reported: depth, seconds, peak RSS, plan size.
* ``encrypted``: the first ``--blocks`` basic blocks of the same ResNet-20 (stem, blocks,
  global pooling and the classifier), degree 2, compiled for N = ``--ring`` (16x32x32 values
  span two ciphertexts at N = 16384) and run encrypted on ``--images`` images: the server runs
  in its own subprocess (its peak RSS), the client (keys, encryption, decryption) in this
  stage's process. Reported: top-1 agreement with the plaintext PANN, precision bits, latency
  per image, bytes up and down, peak RSS of compiler+client and of the server.
* ``run_encrypted`` runs any compiled plan the same way; the full network goes through it as
  soon as ``he_backend.compile`` returns a plan for it (``--full-images`` > 0).

Usage: python benchmarks/bench_resnet20.py [--calib 32] [--alpha 7] [--blocks 1] [--images 2] [--ring 16384]
Ends with one JSON line (a list of dicts, one per stage).
"""
from __future__ import annotations

import argparse
import importlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

RESNET20 = dict(channels=(16,) * 3 + (32,) * 3 + (64,) * 3)
SHAPE = (3, 32, 32)


def peak_mib() -> float:
    """Peak resident memory of this process (Linux ``ru_maxrss`` is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def resnet20(seed: int = 0) -> nn.Module:
    from polyact import models

    torch.manual_seed(seed)
    return models.build_model("resnet", SHAPE, 10, **RESNET20).eval()


def truncated(model: nn.Module, blocks: int) -> nn.Module:
    """Stem, the first ``blocks`` basic blocks, and a pooling + linear head for their width."""
    width = model.blocks[blocks - 1].conv2.out_channels
    torch.manual_seed(1)
    return nn.Sequential(model.stem, *model.blocks[:blocks], nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10)).eval()


def convert_arm(model: nn.Module, arm: str, calib: int, alpha: float):
    from polyact import convert

    images = torch.randn(calib, *SHAPE, generator=torch.Generator().manual_seed(2))
    options = {"degree": 2} if arm == "degree2" else {"alpha": alpha}
    return convert(model, images, **options)


def structured_compile(pann: nn.Module) -> dict:
    """The compiler's lowering part when no secure parameters hold the whole depth: sparse maps,
    folding, slot layouts and tile diagonal offsets for a 16384-slot block."""
    from polyact.graph import lower

    compiler = importlib.import_module("he_backend.compile")  # the module (the package exports the function)

    graph = lower(pann, SHAPE)
    steps = compiler._build_steps(graph)
    compiler._assign_layouts(steps, graph)
    compiler._prepare_affine(steps, int(np.prod(SHAPE)), 16384)
    affine = [s for s in steps if isinstance(s, compiler.AffineStep) and not s.identity]
    weight_bytes = sum(w.data.nbytes + w.indices.nbytes + w.indptr.nbytes for s in affine for w in s.weights)
    return {"plan_weight_bytes": weight_bytes, "diagonals": sum(s.diagonal_count for s in affine),
            "rotations_baby_64": sum(s.rotations(64) for s in affine)}


def stage_compile(args) -> dict:
    import he_backend

    start = time.perf_counter()
    pann, report = convert_arm(resnet20(), args.arm, args.calib, args.alpha)
    converted = time.perf_counter() - start
    row = {"stage": "compile", "arm": args.arm, "depth": report.depth, "convert_seconds": round(converted, 2)}
    try:
        plan = he_backend.compile(pann, SHAPE)
        row.update(plan_bytes=len(plan.to_bytes()), compiled="plan")
    except he_backend.ParameterError as exc:
        row.update(structured_compile(pann), compiled="lowering only: " + str(exc).split(";")[0])
    row["convert_compile_seconds"] = round(time.perf_counter() - start, 2)
    row["peak_rss_mib"] = round(peak_mib())
    return row


def stage_serve(args) -> dict:
    """Server side of :func:`run_encrypted`: plan and public context in, results out."""
    import he_backend

    folder = Path(args.folder)
    start = time.perf_counter()
    server = he_backend.Server.from_bytes((folder / "plan").read_bytes(), (folder / "context").read_bytes())
    results = server.run((folder / "request").read_bytes())
    (folder / "response").write_bytes(results)
    return {"server_seconds": time.perf_counter() - start, "server_peak_rss_mib": round(peak_mib())}


def run_encrypted(plan, pann: nn.Module, x: np.ndarray) -> dict:
    """Encrypt ``x``, run the plan in a separate server process, decrypt, compare with the PANN.
    Plans that need refresh rounds are run by the protocol that provides them."""
    from he_backend.metrics import compare

    if getattr(plan, "segments", None) and len(plan.segments) > 1:
        raise NotImplementedError("this plan needs refresh rounds: run it through the client/server refresh protocol")
    client = plan.client()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "plan").write_bytes(plan.to_bytes())
        (folder / "context").write_bytes(client.public_context())
        start = time.perf_counter()
        request = client.encrypt(x)
        (folder / "request").write_bytes(request)
        server = _subprocess(["--stage", "serve", "--folder", tmp])
        response = (folder / "response").read_bytes()
        out = client.decrypt(response)
        seconds = time.perf_counter() - start
    with torch.no_grad():
        ref = pann(torch.as_tensor(x)).numpy()
    figures = compare(out, ref, ref.argmax(1))
    return {"images": len(x), "agreement": figures["agreement"], "precision_bits": round(figures["precision_bits"], 2),
            "latency_per_image_s": round(seconds / len(x), 2), "bytes_up": len(request), "bytes_down": len(response),
            "ciphertexts_per_input": plan.ciphertexts("input"), **{k: round(v, 2) if isinstance(v, float) else v for k, v in server.items()}}


def stage_encrypted(args) -> dict:
    import he_backend
    from he_backend.params import params_for

    start = time.perf_counter()
    pann, report = convert_arm(truncated(resnet20(), args.blocks), "degree2", args.calib, args.alpha)
    pann = pann.double().eval()
    plan = he_backend.compile(pann, SHAPE, params=params_for(args.ring, report.depth, 40) if args.ring else None)
    rep = plan.report()
    row = {"stage": "encrypted", "blocks": args.blocks, "depth": plan.depth, "N": plan.params.poly_modulus_degree,
           "block": plan.block, "compile_seconds": round(time.perf_counter() - start, 2), "plan_bytes": len(plan.to_bytes()),
           "pt_mults": rep["totals"]["pt_mults"], "rotations": rep["totals"]["rotations"], "rounds": 1}
    x = torch.randn(args.images, *SHAPE, generator=torch.Generator().manual_seed(3)).double().numpy()
    row.update(run_encrypted(plan, pann, x))
    row["compiler_client_peak_rss_mib"] = round(peak_mib())
    return row


def stage_full_encrypted(args) -> dict:
    import he_backend

    pann, _ = convert_arm(resnet20(), "degree2", args.calib, args.alpha)
    pann = pann.double().eval()
    try:
        plan = he_backend.compile(pann, SHAPE)
    except he_backend.ParameterError as exc:
        return {"stage": "full_encrypted", "skipped": f"the plan does not fit one segment yet: {exc}"}
    x = torch.randn(args.full_images, *SHAPE, generator=torch.Generator().manual_seed(3)).double().numpy()
    return {"stage": "full_encrypted", **run_encrypted(plan, pann, x), "compiler_client_peak_rss_mib": round(peak_mib())}


STAGES = {"compile": stage_compile, "encrypted": stage_encrypted, "serve": stage_serve, "full_encrypted": stage_full_encrypted}


def _subprocess(argv: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"stage {argv} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stage", choices=sorted(STAGES))
    parser.add_argument("--arm", choices=["degree2", "composite"], default="degree2")
    parser.add_argument("--folder")
    parser.add_argument("--calib", type=int, default=32)
    parser.add_argument("--alpha", type=float, default=7)
    parser.add_argument("--blocks", type=int, default=1)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--ring", type=int, default=16384, help="ring dimension of the truncated run (0: automatic)")
    parser.add_argument("--full-images", type=int, default=0)
    args = parser.parse_args()
    if args.stage:
        print(json.dumps(STAGES[args.stage](args)))
        return
    common = ["--calib", str(args.calib), "--alpha", str(args.alpha)]
    rows = [_subprocess(["--stage", "compile", "--arm", arm, *common]) for arm in ("degree2", "composite")]
    rows.append(_subprocess(["--stage", "encrypted", "--blocks", str(args.blocks), "--images", str(args.images),
                             "--ring", str(args.ring), *common]))
    if args.full_images:
        rows.append(_subprocess(["--stage", "full_encrypted", "--full-images", str(args.full_images), *common]))
    for row in rows:
        print(" ".join(f"{k}={v}" for k, v in row.items()))
    print(json.dumps(rows))


if __name__ == "__main__":
    main()

"""ResNet-20 at CIFAR shape (3x32x32, channels 16/32/64, 9 basic blocks), the network of the
low-precision PANN paper, with synthetic data (random weights and random images; no CIFAR here).

Stages, each in its own subprocess so that its peak RSS (``ru_maxrss``) is its own:

* ``compile`` per arm (degree-2 activations; composite ReLU at ``--alpha`` bits): convert
  (calibration on ``--calib`` random images), then compile. ResNet-20 needs ~40 levels and
  N = 32768 allows ~19, so the plan is split into refresh segments, as many levels each as the
  compiler's cost model finds cheapest (at a large ``--alpha`` one composite activation may need
  more levels than any segment holds: the stage then measures the structured lowering part of
  the compiler alone). Reported: depth, seconds, peak RSS, plan size.
* ``encrypted`` (``--blocks`` > 0): the first ``--blocks`` basic blocks of the same ResNet-20 (stem, blocks,
  global pooling and the classifier), degree 2, compiled for N = ``--ring`` (16x32x32 values
  span two ciphertexts at N = 16384) and run encrypted on ``--images`` images: the server runs
  in its own subprocess (its peak RSS), the client (keys, encryption, decryption) in this
  stage's process. Reported: top-1 agreement with the plaintext PANN, precision bits, latency
  per image, refresh rounds, bytes up and down, peak RSS of compiler+client and of the server.
* ``full_encrypted`` (``--full-images`` > 0, 2 by default): the whole ResNet-20 (``--arm``; degree 2 by
  default) in three processes: compiler (``compile_full``), client (this stage; it loads only
  the plan's layout) and server (``serve``), which exchange the batch, the refresh rounds and
  the results over a pipe (:func:`run_encrypted`). Reported as ``encrypted``, with the three
  peak RSS apart.

Usage: python benchmarks/bench_resnet20.py [--full-images 2] [--arm degree2|composite] [--calib 32] [--alpha 7]
       [--blocks 0] [--images 2] [--ring 16384]
With no arguments: both ``compile`` rows, then the full network (degree 2) encrypted on 2 images,
what the README's ResNet-20 table quotes (its table used ``--full-images 8``; ``--arm composite``
for the composite row; ``--blocks 1 --full-images 0`` for the truncated row). Prints each stage's
figures, then wall time, CPU seconds (children included) and the load average; ends with one
JSON line ``{"rows": [one dict per stage], "machine": {...}}``.
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

SERVER_CACHE_MIB = 512  # the server's plaintext cache (its default, 2 GiB, would only hold the first layers)
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
    # a composite ReLU diverges outside its interval: 10% around 32 random images' range left
    # 1 of 16 other random images overflowing the plaintext PANN, 50% none
    options = {"degree": 2} if arm == "degree2" else {"alpha": alpha, "margin": 0.5}
    return convert(model, images, **options)


def structured_compile(pann: nn.Module) -> dict:
    """The compiler's lowering part when no secure parameters hold the whole depth: sparse maps,
    folding, slot layouts and tile diagonal offsets for a 16384-slot block."""
    from polyact.ir.lower import lower

    compiler = importlib.import_module("he_backend.compile")  # the module (the package exports the function)

    graph = lower(pann, SHAPE)
    steps = compiler._build_steps(graph)
    compiler._assign_layouts(steps, graph)
    compiler._prepare_affine(steps, int(np.prod(SHAPE)), 16384)
    affine = [s for s in steps if isinstance(s, compiler.AffineStep) and not s.identity]
    weight_bytes = sum(w.data.nbytes + w.indices.nbytes + w.indptr.nbytes for s in affine for w in s.weights)
    from he_backend.lowering.key_choice import best_baby, choose_keys

    keys = choose_keys([s.shape for s in affine], 16384, max_keys=compiler.MAX_ROTATION_KEYS)
    babies = [1] + [abs(k) for k in keys.steps if abs(k) > 1]
    return {"plan_weight_bytes": weight_bytes, "diagonals": sum(s.diagonal_count for s in affine),
            "rotation_keys": list(keys.steps), "rotations": sum(best_baby(s.shape, keys, babies)[0] for s in affine)}


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


def _write_frame(stream, data: bytes) -> None:
    stream.write(len(data).to_bytes(8, "little") + data)
    stream.flush()


def _read_frame(stream) -> bytes:
    size = int.from_bytes(stream.read(8), "little")
    data = stream.read(size)
    if len(data) != size:
        raise RuntimeError("the other process closed the pipe mid-message")
    return data


def stage_serve(args) -> dict:
    """Server side of :func:`run_encrypted`: loads the plan and public context from
    ``--folder``, then answers length-prefixed messages on stdin/stdout: the batch
    (``server.start``), then each refresh reply (``server.resume``), until it sends results."""
    import he_backend
    from he_backend.eval.runner import PlaintextCache
    from he_backend.protocol.refresh import REQUEST_KIND, message_kind

    folder = Path(args.folder)
    start = time.perf_counter()
    cache = PlaintextCache(SERVER_CACHE_MIB << 20)  # ~50 GB of plaintexts per image: a cache holds little
    server = he_backend.Server.from_bytes((folder / "plan").read_bytes(), (folder / "context").read_bytes(), cache=cache)
    load = time.perf_counter() - start
    _write_frame(sys.stdout.buffer, b"ready")
    compute, step = 0.0, server.start
    while True:
        message = _read_frame(sys.stdin.buffer)
        began = time.perf_counter()
        reply = step(message)
        compute += time.perf_counter() - began
        _write_frame(sys.stdout.buffer, reply)
        if message_kind(reply) != REQUEST_KIND:
            break
        step = server.resume
    return {"server_load_seconds": load, "server_compute_seconds": compute, "server_peak_rss_mib": round(peak_mib())}


def run_encrypted(folder: Path, layout, x: np.ndarray, ref: np.ndarray) -> dict:
    """Encrypt ``x`` for the plan's ``layout`` (the client never loads the weights), run the plan
    (``folder / "plan"``) in a separate server process, driving its refresh rounds over a pipe, decrypt, and compare
    with the PANN's outputs ``ref``. Latency: encryption to decryption (rounds included), after
    the server has loaded the plan."""
    import he_backend
    from he_backend.eval.metrics import compare
    from he_backend.protocol.refresh import drive

    client = he_backend.Client(layout)
    rounds = he_backend.Rounds()
    (folder / "context").write_bytes(client.public_context())
    server = subprocess.Popen([sys.executable, __file__, "--stage", "serve", "--folder", str(folder)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def send(data: bytes) -> bytes:
        _write_frame(server.stdin, data)
        return _read_frame(server.stdout)

    _read_frame(server.stdout)  # the server has loaded the plan
    start = time.perf_counter()
    request = client.encrypt(x)
    response = drive(send, send, client.refresh, request, rounds)
    out = client.decrypt(response)
    seconds = time.perf_counter() - start
    stats = json.loads(server.stdout.read().decode().strip().splitlines()[-1])
    if server.wait():
        raise RuntimeError("the server process failed")
    figures = compare(out, ref, ref.argmax(1))
    totals = rounds.totals()
    return {"images": len(x), "agreement": figures["agreement"], "precision_bits": round(figures["precision_bits"], 2),
            "latency_per_image_s": round(seconds / len(x), 2),
            "rounds": totals["rounds"], "bytes_up": len(request) + totals["bytes_up"],
            "bytes_down": len(response) + totals["bytes_down"], "ciphertexts_per_input": layout.input_ciphertexts,
            **{k: round(v, 2) if isinstance(v, float) else v for k, v in stats.items()},
            "client_peak_rss_mib": round(peak_mib())}


def _reference(pann: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return pann(torch.as_tensor(x)).numpy()


def _images(count: int) -> np.ndarray:
    return torch.randn(count, *SHAPE, generator=torch.Generator().manual_seed(3)).double().numpy()


def stage_encrypted(args) -> dict:
    import he_backend
    from he_backend.eval.params import params_for

    start = time.perf_counter()
    pann, report = convert_arm(truncated(resnet20(), args.blocks), "degree2", args.calib, args.alpha)
    pann = pann.double().eval()
    plan = he_backend.compile(pann, SHAPE, params=params_for(args.ring, report.depth, 40) if args.ring else None)
    rep = plan.report()
    plan_bytes = plan.to_bytes()
    row = {"stage": "encrypted", "blocks": args.blocks, "depth": plan.depth, "N": plan.params.poly_modulus_degree,
           "block": plan.block, "compile_seconds": round(time.perf_counter() - start, 2), "plan_bytes": len(plan_bytes),
           "pt_mults": rep["totals"]["pt_mults"], "rotations": rep["totals"]["rotations"]}
    x = _images(args.images)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "plan").write_bytes(plan_bytes)
        row.update(run_encrypted(Path(tmp), plan.layout(), x, _reference(pann, x)))
    row["compiler_client_peak_rss_mib"] = row.pop("client_peak_rss_mib")  # one process: compiler and client
    return row


def stage_compile_full(args) -> dict:
    """Compile the full ResNet-20 (``--arm``; refresh segments) into ``--folder``: the plan, its
    layout, ``--full-images`` images and the PANN's outputs on them."""
    import he_backend

    start = time.perf_counter()
    pann, _ = convert_arm(resnet20(), args.arm, args.calib, args.alpha)
    pann = pann.double().eval()
    plan = he_backend.compile(pann, SHAPE)
    folder = Path(args.folder)
    (folder / "plan").write_bytes(plan.to_bytes())
    (folder / "layout").write_bytes(plan.layout().to_bytes())
    x = _images(args.full_images)
    np.save(folder / "x.npy", x)
    np.save(folder / "ref.npy", _reference(pann, x))
    rep = plan.report()
    return {"depth": plan.depth, "segments": len(plan.segments), "N": plan.params.poly_modulus_degree,
            "pt_mults": rep["totals"]["pt_mults"], "rotations": rep["totals"]["rotations"],
            "refresh_bytes_per_input": rep["refresh"]["bytes_down"] + rep["refresh"]["bytes_up"],
            "convert_compile_seconds": round(time.perf_counter() - start, 2), "compiler_peak_rss_mib": round(peak_mib())}


def stage_full_encrypted(args) -> dict:
    """Full ResNet-20 in three processes: compiler, client (this one), server."""
    import he_backend

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        row = {"stage": "full_encrypted", "arm": args.arm,
               **_subprocess(["--stage", "compile_full", "--folder", tmp, "--arm", args.arm,
                              "--full-images", str(args.full_images), "--calib", str(args.calib),
                              "--alpha", str(args.alpha)])}
        layout = he_backend.PlanLayout.from_bytes((folder / "layout").read_bytes())
        row.update(run_encrypted(folder, layout, np.load(folder / "x.npy"), np.load(folder / "ref.npy")))
    return row


STAGES = {"compile": stage_compile, "encrypted": stage_encrypted, "serve": stage_serve,
          "compile_full": stage_compile_full, "full_encrypted": stage_full_encrypted}


def _subprocess(argv: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"stage {argv} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stage", choices=sorted(STAGES), help="run one stage in this process (used internally)")
    parser.add_argument("--arm", choices=["degree2", "composite"], default="degree2",
                        help="activations of the full encrypted run (default: degree2)")
    parser.add_argument("--folder")
    parser.add_argument("--calib", type=int, default=32)
    parser.add_argument("--alpha", type=float, default=7)
    parser.add_argument("--blocks", type=int, default=0,
                        help="the truncated run: stem + this many blocks + head (default: 0, not run)")
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--ring", type=int, default=16384, help="ring dimension of the truncated run (0: automatic)")
    parser.add_argument("--full-images", type=int, default=2,
                        help="images of the full network run encrypted (default: 2; 0: not run)")
    args = parser.parse_args()
    from machine import finish, start  # benchmarks/machine.py: threads; wall, CPU seconds and load

    meter = start()
    if args.stage:
        print(json.dumps(STAGES[args.stage](args)))
        return
    common = ["--calib", str(args.calib), "--alpha", str(args.alpha)]
    rows = [_subprocess(["--stage", "compile", "--arm", arm, *common]) for arm in ("degree2", "composite")]
    if args.blocks:
        rows.append(_subprocess(["--stage", "encrypted", "--blocks", str(args.blocks), "--images", str(args.images),
                                 "--ring", str(args.ring), *common]))
    if args.full_images:
        rows.append(_subprocess(["--stage", "full_encrypted", "--arm", args.arm, "--full-images", str(args.full_images),
                                 *common]))
    for row in rows:
        print(" ".join(f"{k}={v}" for k, v in row.items()))
    print(finish(meter, rows))


if __name__ == "__main__":
    main()

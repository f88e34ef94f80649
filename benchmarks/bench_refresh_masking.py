"""Refresh masking, before and after, side by side: ResNet-20 (degree 2, random weights and images
as in ``bench_resnet20.py``) compiled with the default mask policy of two checkouts of polyact
(``--before ROOT``: e.g. an export of the branch before the exact masks; this checkout is the
*after* arm) and run encrypted on ``--images`` images, the arms alternating (``--repeat`` times,
each run in a fresh subprocess so that both load their own ``he_backend``).

Per run: the plan's rounds, primes, mask level, bytes down and up per image, the stated leakage
per image and precision after a refresh, top-1 agreement and precision against the plaintext
twin, and the CPU seconds per image of the server (segments, masks, unmasking) and of the client
(encryption, refresh replies, decryption) apart, with the wall time. One process holds both
parties (one thread each, never at once), so the CPU seconds are attributed by timing each
party's calls.

Usage: python benchmarks/bench_refresh_masking.py --before /tmp/main [--images 1] [--repeat 1]
       [--blocks 0]   (0: the whole ResNet-20; k: the stem, k blocks and the head, a quick check)
Ends with one JSON line (a list of dicts, one per run, and the medians per arm).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run_arm(blocks: int, images: int) -> dict:
    """Compile and run in this process, with the ``he_backend`` on ``sys.path``."""
    import numpy as np
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(HERE))
    import bench_resnet20 as b

    import he_backend
    from polyact.convert.pipeline import convert

    model = b.resnet20() if not blocks else b.truncated(b.resnet20(), blocks)
    calib = torch.randn(32, *b.SHAPE, generator=torch.Generator().manual_seed(2))
    pann, _ = convert(model, calib, degree=2)
    pann = pann.double().eval()
    plan = he_backend.compile(pann, b.SHAPE)
    rep = plan.report()["refresh"]
    x = torch.randn(images, *b.SHAPE, generator=torch.Generator().manual_seed(3)).double().numpy()
    ref = plan.simulate(x)
    client = plan.client()
    server = he_backend.Server(plan, client.public_context())
    cpu = {"server": 0.0, "client": 0.0}

    def timed(party, fn):
        def call(*args):
            start = time.process_time()
            try:
                return fn(*args)
            finally:
                cpu[party] += time.process_time() - start
        return call

    wall = time.perf_counter()
    payload = timed("client", client.encrypt)(x)
    rounds = he_backend.Rounds()
    result = he_backend.protocol.refresh.drive(timed("server", server.start), timed("server", server.resume),
                                               timed("client", client.refresh), payload, rounds)
    out = timed("client", client.decrypt)(result)
    wall = time.perf_counter() - wall
    coefficients = rep.get("masked_coefficients", rep.get("masked_coordinates"))
    stated = rep.get("statistical_bits")
    if stated is None and coefficients:  # float masks: sigma - log2(coordinates), per the former report
        stated = rep["sigma"] - math.log2(coefficients)
    cuts = rep["cuts"]
    return {"rounds": rep["rounds"], "coeff_bits": list(plan.params.coeff_bits), "N": plan.params.poly_modulus_degree,
            "sigma": rep["sigma"], "mask_levels": sorted({c["mask_level"] for c in cuts}),
            "statistical_bits_per_image": round(stated, 1) if stated else None,
            "precision_after_refresh_bits": round(min(c["precision_bits"] for c in cuts), 1) if cuts else None,
            "bytes_down_per_image": sum(r["bytes_down"] for r in rounds.log) / images,
            "bytes_up_per_image": (sum(r["bytes_up"] for r in rounds.log) + len(payload)) / images,
            "agreement": float((out.argmax(1) == ref.argmax(1)).mean() * 100),
            "precision_bits": float(-np.log2(np.abs(out - ref).max() / np.abs(ref).max())),
            "server_cpu_s_per_image": cpu["server"] / images, "client_cpu_s_per_image": cpu["client"] / images,
            "wall_s_per_image": wall / images}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", help="root of the checkout to compare with (its he_backend and polyact)")
    parser.add_argument("--images", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--blocks", type=int, default=0)
    parser.add_argument("--arm", help=argparse.SUPPRESS)  # internal: run one arm in this process
    args = parser.parse_args()
    if args.arm:
        print(json.dumps(run_arm(args.blocks, args.images)))
        return
    roots = {"before": Path(args.before).resolve(), "after": HERE.parent}
    rows = []
    for rep in range(args.repeat):
        for arm, root in roots.items():  # interleaved
            env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
            argv = [sys.executable, str(HERE / Path(__file__).name), "--arm", arm, "--blocks", str(args.blocks),
                    "--images", str(args.images)]
            done = subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True, check=True)
            row = {"arm": arm, "repeat": rep, **json.loads(done.stdout.strip().splitlines()[-1])}
            print(json.dumps(row), flush=True)
            rows.append(row)
    medians = {arm: {k: statistics.median(r[k] for r in rows if r["arm"] == arm)
                     for k in ("server_cpu_s_per_image", "client_cpu_s_per_image", "wall_s_per_image")}
               for arm in roots}
    for key in ("server_cpu_s_per_image", "client_cpu_s_per_image"):
        medians.setdefault("ratio", {})[key] = medians["after"][key] / medians["before"][key]
    print(json.dumps({"runs": rows, "medians": medians}))


if __name__ == "__main__":
    main()

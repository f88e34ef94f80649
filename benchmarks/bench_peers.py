"""polyact against Orion (orion-fhe 1.0.2, Lattigo backend) on the same trained weights.

The digits MLP and CNN (polyact.models, GELU) are trained once here; their state dicts and the
images go to an ``.npz`` file that two persistent worker processes read: one runs polyact
(convert at ``--degree``, compile, sample packing), the other Orion (the same architecture
written with ``orion.nn``, ``on.GELU(degree)``, ``orion.fit`` / ``orion.compile``). Workers run
single-threaded (OMP/MKL/OPENBLAS threads = 1, GOMAXPROCS = 1) and speak JSON lines over
stdin/stdout (no pickle). Requests are interleaved (polyact, Orion, polyact, ...) for
``--rounds`` rounds of ``--samples`` images; per network the script reports the median server
time per sample and its range, the per-request ratio polyact / Orion (median and range),
precision in bits of each side against the exact-GELU torch network, levels used, request sizes
and compile times. ``--polyact-workers 2`` adds the arm ``polyact_2p``: the same polyact server
sharing every request with a partner process (:mod:`he_backend.protocol.workers`, two cores), reported
as the ratio polyact (one process) / polyact_2p; with ``--request-images K`` also the arms
``polyact_reqK`` and ``polyact_2p_reqK``: one request of ``K`` images (time per image), in one
process and shared with the partner (which then runs half of the images), and their ratio.

Orion lives in its own virtual environment (it pins torch 2.14.1 + torchvision):
    python3 -m venv orion-venv && orion-venv/bin/pip install torch==2.14.1 torchvision==0.29.1 orion-fhe==1.0.2
Usage: python benchmarks/bench_peers.py --orion-python orion-venv/bin/python [--rounds 3] [--samples 4]
       [--polyact-workers 2]
Without ``--orion-python`` Orion is skipped (polyact's numbers are still printed).
Ends with one JSON line (a list of dicts, one per network).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ORION_VENV_HINT = ("python3 -m venv orion-venv && orion-venv/bin/pip install torch==2.14.1 "
                   "torchvision==0.29.1 orion-fhe==1.0.2")
SINGLE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "GOMAXPROCS": "1"}
INPUT_SHAPE = (1, 8, 8)


# ---- worker side ------------------------------------------------------------------------------
def _serve(handler) -> None:
    """Answer JSON requests, one per line on stdin, with one JSON line each on the original
    stdout; everything else the libraries print goes to stderr."""
    protocol = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    for line in sys.stdin:
        request = json.loads(line)
        try:
            reply = handler(request)
        except Exception as exc:  # report to the parent, which stops with the message
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        protocol.write(json.dumps(reply) + "\n")
        protocol.flush()


def _state_dict(arrays, prefix: str) -> dict:
    import torch

    return {k[len(prefix):]: torch.from_numpy(np.array(arrays[k])) for k in arrays.files if k.startswith(prefix)}


class PolyactWorker:
    """polyact's side: convert (calibrated on the training images), compile, client + server."""

    def __init__(self) -> None:
        self.nets: dict[str, dict] = {}

    def __call__(self, request: dict) -> dict:
        import torch

        import he_backend
        from polyact import data, models
        from polyact.convert.pipeline import convert

        torch.set_num_threads(1)
        arrays = np.load(request["npz"], allow_pickle=False)
        if request["op"] == "setup":
            name = request["network"]
            model = models.build_model(name, INPUT_SHAPE, 10, "gelu").double()
            model.load_state_dict(_state_dict(arrays, f"{name}/"))
            model.eval()
            digits = data.Dataset("digits", torch.from_numpy(arrays["x_train"]), torch.from_numpy(arrays["y_train"]),
                                  torch.from_numpy(arrays["x_test"]), torch.from_numpy(arrays["y_test"]))
            start = time.perf_counter()
            pann, _ = convert(model, digits, degree=request["degree"])
            plan = he_backend.compile(pann.double().eval(), INPUT_SHAPE, "sample")
            compile_s = time.perf_counter() - start
            client = plan.client()
            servers = {1: he_backend.Server(plan, client.public_context())}
            if request.get("workers", 1) > 1:  # a second server that shares each request with a partner process
                servers[2] = he_backend.Server(plan, client.public_context(), workers=2)
            self.nets[name] = {"plan": plan, "client": client, "servers": servers}
            return {"compile_s": compile_s, "levels": plan.depth, "N": plan.params.poly_modulus_degree,
                    "scale_bits": plan.params.scale_bits, "coeff_bits": list(plan.params.coeff_bits),
                    **plan.report()["totals"]}
        net = self.nets[request["network"]]
        images = request.get("images", 1)  # one request of this many images, timed per image
        x = arrays["x_test"][request["index"]: request["index"] + images]
        payload = net["client"].encrypt(x)
        server = net["servers"][request.get("workers", 1)]
        start = time.perf_counter()
        response = server.run(payload)
        seconds = (time.perf_counter() - start) / images
        return {"server_s": seconds, "output": net["client"].decrypt(response)[0].tolist(),
                "request_bytes": len(payload) // images}


ORION_BASE_BITS, ORION_SPECIAL_BITS = 50, 60  # a 50-bit base prime, one 60-bit special prime


def _orion_config(logn: int, scale_bits: int, levels: int) -> dict:
    """Orion's CKKS parameters: ring 2^logn (conjugate-invariant: 2^logn real slots, Orion's
    default for its MNIST configs), ``levels`` primes of ``scale_bits`` above the base prime, one
    special prime; Orion's default sparse secret (Hamming weight 192)."""
    return {"ckks_params": {"LogN": logn, "LogQ": [ORION_BASE_BITS] + [scale_bits] * levels,
                            "LogP": [ORION_SPECIAL_BITS],
                            "LogScale": scale_bits, "H": 192, "RingType": "ConjugateInvariant"},
            "orion": {"margin": 2, "embedding_method": "hybrid", "backend": "lattigo", "fuse_modules": True,
                      "debug": False, "io_mode": "none"}}


def _orion_network(name: str, degree: int):
    """The polyact.models architecture written with orion.nn (same parameter names)."""
    import orion.nn as on
    from torch import nn

    class MLP(on.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.Sequential(on.Flatten(), on.Linear(64, 64), on.GELU(degree=degree), on.Linear(64, 10))

        def forward(self, x):
            return self.layers(x)

    class LeNet(on.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                on.Conv2d(1, 8, 3, padding=1), on.BatchNorm2d(8), on.GELU(degree=degree), on.AvgPool2d(2),
                on.Conv2d(8, 16, 3, padding=1), on.BatchNorm2d(16), on.GELU(degree=degree), on.AvgPool2d(2))
            self.classifier = nn.Sequential(on.Flatten(), on.Linear(16 * 2 * 2, 10))

        def forward(self, x):
            return self.classifier(self.features(x))

    return {"mlp": MLP, "cnn": LeNet}[name]()


class OrionWorker:
    """Orion's side: fit on the training images, compile, encrypt, ``net(ciphertext)``."""

    def __init__(self) -> None:
        self.nets: dict[str, dict] = {}

    def __call__(self, request: dict) -> dict:
        import orion
        import orion.nn as on
        import torch
        from torch.utils.data import DataLoader, TensorDataset

        torch.set_num_threads(1)
        arrays = np.load(request["npz"], allow_pickle=False)
        if request["op"] == "setup":
            name = request["network"]
            if self.nets:
                orion.delete_scheme()
            orion.init_scheme(_orion_config(request["logn"], request["scale_bits"], request["levels"]))
            net = _orion_network(name, request["degree"])
            missing, unexpected = net.load_state_dict(
                {k: v.float() for k, v in _state_dict(arrays, f"{name}/").items()}, strict=False)
            pools = {f"{n}.weight" for n, m in net.named_modules() if isinstance(m, on.AvgPool2d)}
            if unexpected or set(missing) - pools:  # Orion's average pools carry their own fixed kernel
                raise ValueError(f"weights do not match Orion's {name}: missing {missing}, unexpected {unexpected}")
            net.eval()
            start = time.perf_counter()
            images = torch.from_numpy(arrays["x_train"]).float()  # batch size 1: Orion packs one image
            orion.fit(net, DataLoader(TensorDataset(images, torch.zeros(len(images))), batch_size=1))
            input_level = orion.compile(net)
            compile_s = time.perf_counter() - start
            net.he()
            self.nets = {name: {"net": net, "input_level": input_level, "N": 1 << request["logn"]}}
            return {"compile_s": compile_s, "input_level": input_level, "N": 1 << request["logn"]}
        state = self.nets[request["network"]]
        x = torch.from_numpy(arrays["x_test"][request["index"]: request["index"] + 1]).float()
        ctxt = orion.encrypt(orion.encode(x, state["input_level"]))
        start = time.perf_counter()
        out = state["net"](ctxt)
        seconds = time.perf_counter() - start
        output = out.decrypt().decode().flatten()[:10].double().tolist()
        n = state["N"]
        return {"server_s": seconds, "output": output, "output_level": out.level(),
                "levels": state["input_level"] - out.level(),
                "request_bytes": len(ctxt) * 2 * n * (state["input_level"] + 1) * 8}


# ---- parent side ------------------------------------------------------------------------------
class Worker:
    """A worker process answering JSON lines."""

    def __init__(self, python: str, kind: str, log: Path) -> None:
        env = {**os.environ, **SINGLE_THREAD}
        if kind == "polyact":
            env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
        else:
            env.pop("PYTHONPATH", None)
        self.kind = kind
        self.log = log
        self.proc = subprocess.Popen([python, str(Path(__file__).resolve()), "--worker", kind], env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log.open("w"))

    def ask(self, **request) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.kind} worker died; its log: {self.log}")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"{self.kind} worker: {reply['error']} (log: {self.log})")
        return reply

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def _train(name: str, digits, epochs: int):
    import torch

    from polyact import models
    from polyact.train import loop as trainer

    torch.manual_seed(0)
    model = models.build_model(name, INPUT_SHAPE, 10, "gelu")
    trainer.train_classifier(model, digits, epochs=epochs, seed=0)
    return model.double().eval()


def _orion_ring(levels: int, scale_bits: int, max_logn: int) -> tuple[int, int]:
    """128-bit-secure ring and scale for Orion (the log2(QP) bounds polyact's parameters use):
    the smallest ring up to 2^max_logn that holds ``levels`` primes of polyact's scale, else
    2^max_logn with the largest scale that fits (Orion packs dense (slots x slots) matrices, so
    2^15 needs more than 8 GB on its side)."""
    from he_backend.eval.params import MAX_LOG_Q

    fixed = ORION_BASE_BITS + ORION_SPECIAL_BITS
    for n in sorted(MAX_LOG_Q):
        if n.bit_length() - 1 <= max_logn and MAX_LOG_Q[n] >= fixed + levels * scale_bits:
            return n.bit_length() - 1, scale_bits
    fitting = (MAX_LOG_Q[1 << max_logn] - fixed) // levels
    if fitting < 20:
        raise ValueError(f"Orion's {levels} levels do not fit a 128-bit-secure ring 2^{max_logn}; raise --orion-logn")
    return max_logn, fitting


def _spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", choices=["polyact", "orion"], help=argparse.SUPPRESS)
    parser.add_argument("--orion-python", help="python of a venv with orion-fhe (see the module docstring)")
    parser.add_argument("--networks", nargs="+", default=["mlp", "cnn"], choices=["mlp", "cnn"])
    parser.add_argument("--degree", type=int, default=7, help="GELU degree on both sides")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=4, help="test images per round")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--orion-logn", type=int, default=14, help="largest ring for Orion (log2 N)")
    parser.add_argument("--polyact-workers", type=int, default=1, choices=[1, 2],
                        help="2: also time polyact with a partner process per request (two cores; an extra arm)")
    parser.add_argument("--request-images", type=int, default=1,
                        help="with --polyact-workers 2 and K > 1: also time requests of K images (two more arms)")
    parser.add_argument("--orion-levels", nargs="+", default=["mlp=5", "cnn=11"],
                        help="primes above the base prime Orion gets per network (what its compile asks for)")
    args = parser.parse_args()
    if args.worker:
        _serve(PolyactWorker() if args.worker == "polyact" else OrionWorker())
        return
    from machine import finish, start  # benchmarks/machine.py: threads; wall, CPU seconds and load

    meter = start()

    import torch

    from he_backend.eval.metrics import compare
    from polyact import data

    torch.set_num_threads(1)
    digits = data.digits()
    folder = Path(tempfile.mkdtemp(prefix="bench_peers_"))
    npz = folder / "weights.npz"
    arrays = {"x_train": digits.x_train.double().numpy(), "y_train": digits.y_train.numpy(),
              "x_test": digits.x_test.double().numpy(), "y_test": digits.y_test.numpy()}
    exact = {}
    for name in args.networks:
        model = _train(name, digits, args.epochs)
        arrays.update({f"{name}/{k}": v.detach().numpy() for k, v in model.state_dict().items()})
        with torch.no_grad():
            exact[name] = model(digits.x_test.double()).numpy()
    np.savez(npz, **arrays)
    print(f"machine load (uptime): {os.getloadavg()}; weights and images in {npz}", flush=True)

    workers = {"polyact": Worker(sys.executable, "polyact", folder / "polyact.log")}
    if args.orion_python:
        workers["orion"] = Worker(args.orion_python, "orion", folder / "orion.log")
    else:
        print(f"Orion skipped: pass --orion-python PATH to a venv made with:\n  {ORION_VENV_HINT}", flush=True)
    rows = []
    for name in args.networks:
        setup = {"polyact": workers["polyact"].ask(op="setup", network=name, npz=str(npz), degree=args.degree,
                                                   workers=args.polyact_workers)}
        if "orion" in workers:
            levels = int(dict(v.split("=") for v in args.orion_levels)[name])
            logn, scale_bits = _orion_ring(levels, setup["polyact"]["scale_bits"], args.orion_logn)
            setup["orion"] = workers["orion"].ask(op="setup", network=name, npz=str(npz), degree=args.degree,
                                                  logn=logn, scale_bits=scale_bits, levels=levels)
            setup["orion"]["scale_bits"] = scale_bits
        arms = {"polyact": ("polyact", 1, 1)}  # arm -> (worker, processes, images per request)
        if args.polyact_workers > 1:
            arms["polyact_2p"] = ("polyact", 2, 1)
            if args.request_images > 1:
                k = args.request_images
                arms[f"polyact_req{k}"], arms[f"polyact_2p_req{k}"] = ("polyact", 1, k), ("polyact", 2, k)
        if "orion" in workers:
            arms["orion"] = ("orion", 1, 1)
        times = {a: [] for a in arms}
        outputs = {a: {} for a in arms}
        sizes, orion_levels = {}, None
        load = []
        for round_ in range(args.rounds):
            load.append(os.getloadavg()[0])
            for i in range(args.samples):
                for arm, (kind, processes, images) in arms.items():
                    reply = workers[kind].ask(op="infer", network=name, npz=str(npz), index=i, workers=processes,
                                              images=images)
                    times[arm].append(reply["server_s"])
                    outputs[arm][i] = reply["output"]
                    sizes[arm] = reply["request_bytes"]
                    orion_levels = reply.get("levels", orion_levels)
        ref = exact[name][: args.samples]
        labels = digits.y_test[: args.samples].numpy()
        row = {"network": f"{name}/gelu", "degree": args.degree, "rounds": args.rounds, "samples": args.samples,
               "load_1min": _spread(load)}
        for arm, (kind, processes, _) in arms.items():
            out = np.array([outputs[arm][i] for i in range(args.samples)])
            c = compare(out, ref, labels)
            row[arm] = {"server_s": _spread(times[arm]), "precision_bits": c["precision_bits"], "processes": processes,
                        "agreement": c["agreement"], "request_bytes": sizes[arm], **setup[kind]}
            if kind == "orion":
                row[arm]["levels"] = orion_levels
        for arm, (kind, processes, images) in arms.items():
            if arm != "polyact" and images == 1:  # per request, interleaved: polyact (1 process) over this arm
                row[f"ratio_polyact_over_{arm}"] = _spread([p / o for p, o in zip(times["polyact"], times[arm])])
            elif processes == 2:  # the same K-image request in one process over two
                one = times[f"polyact_req{images}"]
                row[f"ratio_polyact_req{images}_over_{arm}"] = _spread([p / o for p, o in zip(one, times[arm])])
        rows.append(row)
        _print_row(row)
    for worker in workers.values():
        worker.close()
    print(finish(meter, rows))


def _print_row(row: dict) -> None:
    print(f"\n{row['network']} (degree {row['degree']}, {row['rounds']} rounds x {row['samples']} images, "
          f"1-min load {row['load_1min']['median']:.1f})")
    print(f"{'arm':<16} {'server s med':>12} {'range':>17} {'bits':>6} {'levels':>6} {'req KB':>8} {'compile s':>9}")
    for arm in [k for k in row if isinstance(row[k], dict) and "server_s" in row[k]]:
        r, s = row[arm], row[arm]["server_s"]
        print(f"{arm:<16} {s['median']:>12.3f} {s['min']:>8.3f}-{s['max']:<8.3f} {r['precision_bits']:>6.1f} "
              f"{r['levels']!s:>6} {r['request_bytes'] / 1e3:>8.0f} {r['compile_s']:>9.1f}")
    for key in [k for k in row if k.startswith("ratio_")]:
        q = row[key]
        print(f"{key}: median {q['median']:.2f} (range {q['min']:.2f}-{q['max']:.2f})")


if __name__ == "__main__":
    main()

"""The encrypted-inference service under load: requests/s and p50/p95 latency at 1, 4 and 8
concurrent clients, and its resident memory per session and after session churn.

Trains and converts the digits MLP (or --model cnn), starts ``polyact serve`` in its own
process on loopback, and drives it with ``he_backend.service.remote.RemoteClient`` from threads: each
client has its own keys and session and sends --requests single-image requests (encrypt,
post, decrypt are all inside the measured latency) to a warm server.

The memory row reads the server's own RSS (``GET /health``): after warm-up, with --sessions
sessions open (per session: the difference divided by their number, next to the estimate
``he_backend.service.memory.session_bytes`` the budget uses), after deleting them, and after --churn
create/infer/delete cycles.

Usage: python benchmarks/bench_service.py [--model mlp] [--concurrency 1 4 8] [--requests 5] [--sessions 8] [--churn 50]
Ends with one JSON line (a list of dicts).
"""
from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import torch

import he_backend
from he_backend.service.memory import session_bytes
from he_backend.service.remote import RemoteClient
from polyact import data, models
from polyact.convert.pipeline import convert
from polyact.convert.storage import save_pann
from polyact.train import loop as trainer


def start_server(pann_path: Path, args) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "polyact", "serve", str(pann_path), "--port", str(port),
                                "--min-scale-bits", str(args.min_scale_bits), "--max-sessions", "64"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            httpx.get(url + "/health", timeout=10).raise_for_status()
            return process, url
        except httpx.HTTPError:
            if process.poll() is not None or time.time() > deadline:
                raise RuntimeError("the service did not start")
            time.sleep(0.3)


def load(url: str, clients: int, requests: int, x: np.ndarray) -> dict:
    remotes = [RemoteClient(url, timeout=600) for _ in range(clients)]  # keys + session upload, not timed
    remotes[0].infer(x[0])  # warm the server's shared plaintext cache (the first request encodes the weights)

    def work(c: int) -> list[float]:
        times = []
        for r in range(requests):
            start = time.perf_counter()
            remotes[c].infer(x[(c * requests + r) % len(x)])
            times.append(time.perf_counter() - start)
        return times

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = [t for batch in pool.map(work, range(clients)) for t in batch]
    wall = time.perf_counter() - start
    for r in remotes:
        r.close()
    return {"clients": clients, "requests": len(latencies), "requests_per_s": len(latencies) / wall,
            "p50_s": float(np.percentile(latencies, 50)), "p95_s": float(np.percentile(latencies, 95))}


def server_rss(url: str) -> int:
    return httpx.get(url + "/health", timeout=60).json()["memory"]["rss_bytes"]


def memory(url: str, sessions: int, churn: int, x: np.ndarray) -> dict:
    """Server RSS (MiB) warm, per open session, after deleting them, and after ``churn`` cycles."""
    mib = 2**20
    first = RemoteClient(url, timeout=600)
    first.infer(x[0])  # weights encoded, one evaluation's working memory taken
    warm = server_rss(url)
    others = [RemoteClient(url, timeout=600, client=first.client) for _ in range(sessions - 1)]
    full = server_rss(url)
    for r in others:
        r.close()
    first.close()
    emptied = server_rss(url)
    client = first.client
    for i in range(churn):
        with RemoteClient(url, timeout=600, client=client) as r:
            r.infer(x[i % len(x)])
    return {"rss_warm_mib": warm / mib, "sessions": sessions, "rss_with_sessions_mib": full / mib,
            "rss_per_session_mib": (full - warm) / max(sessions - 1, 1) / mib,
            "rss_after_delete_mib": emptied / mib, "churn_cycles": churn, "rss_after_churn_mib": server_rss(url) / mib}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mlp", choices=("mlp", "cnn"))
    parser.add_argument("--degree", type=int, default=7)
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 4, 8])
    parser.add_argument("--requests", type=int, default=5, help="requests per client")
    parser.add_argument("--min-scale-bits", type=int, default=30)
    parser.add_argument("--sessions", type=int, default=8, help="sessions held at once for the memory row")
    parser.add_argument("--churn", type=int, default=50, help="create/infer/delete cycles for the memory row")
    args = parser.parse_args()
    from machine import finish, start  # benchmarks/machine.py: threads; wall, CPU seconds and load

    meter = start()
    warnings.simplefilter("ignore")
    digits = data.digits()
    torch.manual_seed(0)
    model = models.build_model(args.model, digits.input_shape, 10, "relu")
    trainer.train_classifier(model, digits, epochs=15, seed=0)
    pann, report = convert(model, digits, degree=args.degree)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.pann"
        save_pann(pann, path, input_shape=digits.input_shape)
        process, url = start_server(path, args)
        try:
            rows = []
            for clients in args.concurrency:
                rows.append({"model": args.model, "depth": report.depth, **load(url, clients, args.requests,
                                                                                   digits.x_test.numpy())})
                r = rows[-1]
                print(f"{clients} client(s): {r['requests_per_s']:.2f} requests/s, p50 {r['p50_s']:.2f} s, "
                      f"p95 {r['p95_s']:.2f} s", flush=True)
            plan_bytes = session_bytes(he_backend.compile(pann.double().eval(), digits.input_shape,
                                                          min_scale_bits=args.min_scale_bits))
            rows.append({"model": args.model, "depth": report.depth, "session_estimate_mib": plan_bytes / 2**20,
                         **memory(url, args.sessions, args.churn, digits.x_test.numpy())})
            m = rows[-1]
            print(f"RSS: warm {m['rss_warm_mib']:.0f} MiB, {m['rss_per_session_mib']:.1f} MiB per session "
                  f"(estimate {m['session_estimate_mib']:.1f}), {m['rss_after_delete_mib']:.0f} MiB after deleting "
                  f"{m['sessions']}, {m['rss_after_churn_mib']:.0f} MiB after {m['churn_cycles']} cycles", flush=True)
        finally:
            process.terminate()
            process.wait(10)
    print(finish(meter, rows))


if __name__ == "__main__":
    main()

"""The HTTP service under attack on loopback: malformed headers, disconnects, slow uploads,
contexts padded with unneeded Galois keys, concurrent large bodies, and the access log.

Starts ``create_app`` for the digits MLP (N = 8192) in this process with a memory budget, runs
each attack and prints one table row per attack: requests, 2xx, 4xx, 5xx, wrong answers
(decrypted results off the plaintext PANN by more than 1e-2), peak RSS against the budget, and
tracebacks or session ids written to the log. Works on this tree or an older one
(PYTHONPATH=OLD_TREE).

Usage: python benchmarks/attack_service.py [--fuzz 500] [--seed 0]. Ends with one JSON line.
"""
from __future__ import annotations

import argparse
import collections
import json
import logging
import socket
import struct
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import torch
import uvicorn

import he_backend
from he_backend.protocol.keys import KeyHolder
from he_backend.protocol.serialization import MAGIC
from he_backend.service.app import ServiceLimits, create_app
from he_backend.service.memory import evaluation_bytes, rss_bytes, session_bytes, upload_bytes
from polyact import data, models
from polyact.convert.pipeline import convert

OCTETS = {"Content-Type": "application/octet-stream"}
ODD = [None, True, 5, -1, 0, 10**6, 2**70, 1.5, "64", "", [], [1], [[1]], [1, "x"], {"a": 1}, [10**9]]


class Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(logging.Formatter("%(message)s").format(record))


class Peak:
    """Samples this process's RSS every 20 ms."""

    def __init__(self):
        self.peak, self._stop = rss_bytes(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_bytes())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def serve(app):
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, log_level="info", access_log=True))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server, "http://127.0.0.1:%d" % sock.getsockname()[1], sock.getsockname()[1]


class Http:
    """One fresh connection per request; a dropped connection answers status 599 (counted as 5xx)."""

    def __init__(self, url: str):
        self.url = url

    def request(self, method: str, path: str, content: bytes | None = None) -> httpx.Response:
        try:
            return httpx.request(method, self.url + path, content=content, headers=OCTETS, timeout=120)
        except httpx.TransportError:
            return httpx.Response(599)

    def post(self, path, content):
        return self.request("POST", path, content)

    def get(self, path):
        return self.request("GET", path)

    def delete(self, path):
        return self.request("DELETE", path)


def reheader(payload: bytes, **fields) -> bytes:
    (size,) = struct.unpack("<I", payload[8:12])
    header = {**json.loads(payload[12 : 12 + size]), **fields}
    header = {k: v for k, v in header.items() if v != "<delete>"}
    meta = json.dumps(header).encode()
    return MAGIC + struct.pack("<I", len(meta)) + meta + payload[12 + size :]


def start_post(port: int, path: str, length: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=120)
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
                 f"Content-Length: {length}\r\n\r\n".encode())
    return sock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fuzz", type=int, default=500, help="malformed header requests")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    digits = data.digits()
    model = models.build_model("mlp", digits.input_shape, 10, hidden=(16,))
    pann, _ = convert(model, digits, degree=7)
    pann = pann.double().eval()
    plan = he_backend.compile(pann, digits.input_shape, min_scale_bits=25)
    client = he_backend.Client(plan)
    x = digits.x_test[:4].numpy()
    with torch.no_grad():
        expected = pann(torch.as_tensor(x, dtype=torch.float64)).numpy()
    budget = rss_bytes() + (64 << 20) + evaluation_bytes(plan) + 4 * session_bytes(plan) + upload_bytes(plan)
    limits = ServiceLimits(session_ttl=10, max_sessions=4, max_body_bytes=128_000_000, cache_bytes=64 << 20,
                           max_memory_bytes=budget)
    lines = Lines()
    for name in ("uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).addHandler(lines)
    server, url, port = serve(create_app(plan, limits))
    http = Http(url)
    rows = {}

    def row(name, statuses, wrong=0, peak=None, **more):
        counts = collections.Counter(s // 100 for s in statuses)
        rows[name] = {"requests": len(statuses), "2xx": counts[2], "4xx": counts[4], "5xx": counts[5], "wrong": wrong,
                      **({"peak_rss_mib": peak >> 20, "budget_mib": budget >> 20} if peak else {}), **more}

    def session() -> str:
        return http.post("/sessions", content=client.public_context()).json()["session"]

    def check(content: bytes) -> int:
        return int(np.abs(client.decrypt(content) - expected).max() > 1e-2)

    # 1. malformed headers: the four context cases, per_ciphertext 10^6, then random fields
    key = session()
    context, batch = client.public_context(), client.encrypt(x)
    statuses = [http.post("/sessions", content=reheader(context, **case)).status_code
                for case in ({"scale_bits": "<delete>"}, {"scale_bits": [25]}, {"rotations": 5}, {"rotations": [[1]]})]
    response = http.post(f"/sessions/{key}/infer", content=reheader(batch, per_ciphertext=10**6))
    statuses.append(response.status_code)
    row("named cases", statuses)
    rng = np.random.default_rng(args.seed)
    statuses, wrong = [], 0
    for i in range(args.fuzz):
        target = i % 2
        base, keys = ((context, ["kind", "sections", "scale_bits", "rotations"]) if target == 0 else
                      (batch, ["kind", "sections", "samples", "per_ciphertext", "block", "input_length", "key",
                               "coeff_bits", "poly_modulus_degree", "input_layout"]))
        fields = {keys[int(rng.integers(len(keys)))]: (ODD + ["<delete>"])[int(rng.integers(len(ODD) + 1))]
                  for _ in range(int(rng.integers(1, 3)))}
        response = http.post("/sessions" if target == 0 else f"/sessions/{key}/infer", content=reheader(base, **fields))
        statuses.append(response.status_code)
        if response.status_code == 200 and target == 1:
            wrong += check(response.content)
        elif response.status_code == 200:
            http.delete(f"/sessions/{response.json()['session']}")
    row("fuzzed headers", statuses, wrong)

    # 2. disconnects mid-upload and mid-inference
    before = len([line for line in lines.lines if "Traceback" in line or "Exception" in line])
    for body_part in (0.5, 1.0):
        for _ in range(3):
            sock = start_post(port, f"/sessions/{key}/infer", len(batch))
            sock.sendall(batch[: int(len(batch) * body_part)])
            sock.close()
    time.sleep(3)
    response = http.post(f"/sessions/{key}/infer", content=batch)
    tracebacks = len([line for line in lines.lines if "Traceback" in line or "Exception" in line]) - before
    row("disconnects", [response.status_code], check(response.content) if response.status_code == 200 else 0,
        tracebacks=tracebacks)
    http.delete(f"/sessions/{key}")

    # 3. slow uploads: four trickling contexts while an honest client asks six times, 1 s apart
    trickle = [start_post(port, "/sessions", len(context)) for _ in range(4)]
    stop = threading.Event()

    def drip():
        for step in range(1, 200):
            if stop.wait(0.5):
                return
            for sock in trickle:
                try:
                    sock.sendall(context[step * 100 : (step + 1) * 100])
                except OSError:
                    pass

    dripper = threading.Thread(target=drip, daemon=True)
    dripper.start()
    honest = []
    for _ in range(6):
        time.sleep(1)
        response = http.post("/sessions", content=context)
        honest.append(response.status_code)
        if response.status_code == 200:
            http.delete(f"/sessions/{response.json()['session']}")
    stop.set()
    for sock in trickle:
        sock.close()
    row("slow uploads (honest client)", honest)
    time.sleep(1)

    # 4a. contexts padded with 36 Galois keys the plan does not need
    extra = [s for s in range(1, 200) if s not in plan.rotations][:36]
    padded = KeyHolder(plan.params, list(plan.rotations) + extra).public_context()
    peak = Peak()
    statuses = [http.post("/sessions", content=padded).status_code for _ in range(4)]
    held = http.get("/health").json()["memory"]["reserved_bytes"]
    row("padded contexts", statuses, peak=peak.stop(), reserved_mib=held >> 20)
    time.sleep(11)  # the sessions expire (ttl 10 s) at the next POST /sessions

    # 4b. six concurrent 100 MB bodies on one session
    key = session()
    chunk = bytes(1 << 20)

    def flood(_):
        sock = start_post(port, f"/sessions/{key}/infer", 100_000_000)
        try:
            for _ in range(100):
                sock.sendall(chunk)
        except OSError:  # the server answered early and closed
            pass
        try:
            answer = sock.recv(100)
        except OSError:
            answer = b""
        sock.close()
        return int(answer[9:12] or 599)

    peak = Peak()
    with ThreadPoolExecutor(6) as pool:
        statuses = list(pool.map(flood, range(6)))
    row("six 100 MB bodies", statuses, peak=peak.stop())

    # 5. the access log
    leaked = sum(key in line for line in lines.lines)
    row("access log", [], session_ids_logged=leaked)
    server.should_exit = True
    print(f"{'attack':30} {'req':>5} {'2xx':>5} {'4xx':>5} {'5xx':>5} {'wrong':>5}  other")
    for name, r in rows.items():
        other = {k: v for k, v in r.items() if k not in ("requests", "2xx", "4xx", "5xx", "wrong")}
        print(f"{name:30} {r['requests']:5} {r['2xx']:5} {r['4xx']:5} {r['5xx']:5} {r['wrong']:5}  {other}")
    print(json.dumps(rows))
    sys.stdout.flush()


if __name__ == "__main__":
    main()

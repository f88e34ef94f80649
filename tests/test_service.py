"""The HTTP service, started for real on loopback and driven by the real client."""
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tenseal as ts
import torch
import uvicorn

import he_backend
from he_backend.client import RemoteClient, ServiceError
from he_backend.service import ServiceLimits, SessionTable, create_app
from polyact.convert import convert
from polyact.storage import save_pann

LIMITS = ServiceLimits(session_ttl=600, max_sessions=12, max_body_bytes=20_000_000)


@pytest.fixture(scope="module")
def pann(digits, digits_mlp):
    pann, _ = convert(digits_mlp, digits, degree=7)
    return pann.double().eval()


@pytest.fixture(scope="module")
def plan(pann, digits):
    return he_backend.compile(pann, digits.input_shape, min_scale_bits=25)  # N = 8192: quick


@pytest.fixture(scope="module")
def url(plan):
    server = uvicorn.Server(uvicorn.Config(create_app(plan, LIMITS), log_level="warning"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield "http://127.0.0.1:%d" % sock.getsockname()[1]
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def remote(url):
    return RemoteClient(url)


def reference(pann, x):
    with torch.no_grad():
        return pann(torch.as_tensor(x, dtype=torch.float64)).numpy()


def post(url, path, body):
    request = urllib.request.Request(url + path, data=body, method="POST")
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())["detail"]


def test_remote_inference_matches_the_plaintext_pann(remote, pann, digits):
    x = digits.x_test[:3].numpy()
    out = remote.infer(x)
    ref = reference(pann, x)
    assert np.abs(out - ref).max() < 1e-2 * np.abs(ref).max()
    assert (out.argmax(1) == ref.argmax(1)).all()


def test_health_and_layout_without_weights(url, plan):
    with urllib.request.urlopen(url + "/health") as response:
        health = json.loads(response.read())
    assert health["status"] == "ok" and health["depth"] == plan.depth
    with urllib.request.urlopen(url + "/layout") as response:
        layout = response.read()
    assert he_backend.PlanLayout.from_bytes(layout) == plan.layout()
    assert len(layout) < 2000 < len(plan.to_bytes())  # the weights stay on the server


def test_secret_key_context_is_refused(url, remote, tmp_path):
    remote.client.save(tmp_path / "key")
    status, detail = post(url, "/sessions", (tmp_path / "key").read_bytes())
    assert status == 403 and "secret key" in detail
    context = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[40, 30, 40])
    status, detail = post(url, "/sessions", context.serialize(save_secret_key=True))
    assert status == 403 and "save_secret_key=False" in detail


@pytest.mark.parametrize("body, status, words", [
    (b"garbage" * 50, 400, "not a polyact"),
    (b"", 400, "empty request body"),
])
def test_bad_bodies_are_4xx_with_a_reason(url, remote, body, status, words):
    got, detail = post(url, f"/sessions/{remote.session}/infer", body)
    assert got == status and words in detail


def test_oversized_body_is_refused_before_it_is_read(url, remote):
    connection = http.client.HTTPConnection(url.removeprefix("http://"))
    connection.putrequest("POST", f"/sessions/{remote.session}/infer")
    connection.putheader("Content-Length", str(LIMITS.max_body_bytes + 1))
    connection.endheaders()  # announce 20 MB, send nothing: the answer must not wait for it
    response = connection.getresponse()
    assert response.status == 413 and "exceeds the limit" in json.loads(response.read())["detail"]
    connection.close()


def test_garbled_and_mismatched_ciphertexts(url, remote, digits, plan):
    payload = remote.client.encrypt(digits.x_test[:1].numpy())
    for damaged in (payload[: len(payload) // 2], payload[:-300] + bytes(300)):
        status, detail = post(url, f"/sessions/{remote.session}/infer", damaged)
        assert status == 400 and "bad ciphertexts" in detail
    status, detail = post(url, "/sessions", b"POLYACT" + bytes(100))
    assert status == 400 and "bad public context" in detail
    other = he_backend.Client(plan)  # right layout, other keys: computes, but only garbage comes back
    out = remote.client.decrypt(remote.infer_bytes(other.encrypt(digits.x_test[:1].numpy())))
    assert np.abs(out).max() > 1e3


def test_unknown_session_and_deleted_session(url, remote, digits):
    status, detail = post(url, "/sessions/nope/infer", b"x")
    assert status == 404 and "POST /sessions" in detail
    short = RemoteClient(url)
    short.close()
    with pytest.raises(ServiceError, match="HTTP 404"):
        short.infer(digits.x_test[:1].numpy())


def test_sessions_expire_and_are_bounded():
    table = SessionTable(ServiceLimits(session_ttl=0.2, max_sessions=2))
    first = table.add(object())
    table.add(object())
    with pytest.raises(Exception, match="maximum of 2 sessions"):
        table.add(object())
    time.sleep(0.3)
    with pytest.raises(Exception, match="unknown or expired"):
        table.get(first)
    assert len(table) == 0


def test_concurrent_clients_lose_nothing(url, pann, digits):
    clients, requests = 8, 5
    x = digits.x_test[: clients * requests].numpy()
    remotes = [RemoteClient(url) for _ in range(clients)]

    def work(c):
        return [(c * requests + r, remotes[c].infer(x[c * requests + r])) for r in range(requests)]

    with ThreadPoolExecutor(clients) as pool:
        results = [item for batch in pool.map(work, range(clients)) for item in batch]
    assert sorted(i for i, _ in results) == list(range(clients * requests))
    out = np.concatenate([o for _, o in sorted(results, key=lambda t: t[0])])
    ref = reference(pann, x)
    assert (out.argmax(1) == ref.argmax(1)).all()
    for r in remotes:
        r.close()


def test_polyact_serve_command(pann, digits, tmp_path):
    path = tmp_path / "mlp.pann"
    save_pann(pann, path, input_shape=digits.input_shape)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    process = subprocess.Popen([sys.executable, "-m", "polyact", "serve", str(path), "--port", str(port),
                                "--min-scale-bits", "25"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        while True:
            try:
                client = RemoteClient(f"http://127.0.0.1:{port}")
                break
            except OSError:
                assert process.poll() is None and time.time() < deadline, process.stderr.read().decode()
                time.sleep(0.3)
        x = digits.x_test[:2].numpy()
        assert (client.infer(x).argmax(1) == reference(pann, x).argmax(1)).all()
    finally:
        process.terminate()
        process.wait(10)

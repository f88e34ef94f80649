"""The HTTP service, started for real on loopback and driven by the real client."""
import contextlib
import http.client
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import tenseal as ts
import torch
import uvicorn

import he_backend
from he_backend.protocol.serialization import MAGIC
from he_backend.service.app import ServiceLimits, SessionTable, create_app
from he_backend.service.auth import Tokens
from he_backend.service.memory import (
    evaluation_bytes,
    rss_bytes,
    session_bytes,
    upload_bytes,
)
from he_backend.service.remote import RemoteClient, ServiceError
from polyact.cli.commands import main
from polyact.convert.pipeline import convert
from polyact.convert.storage import save_pann

pytestmark = pytest.mark.isolated  # CKKS memory: this module runs in its own interpreter (tests/isolation.py)

LIMITS = ServiceLimits(session_ttl=600, max_sessions=12, max_body_bytes=64_000_000)
TIMEOUT = 60  # seconds, for every HTTP call: a misbehaving server fails the test instead of hanging it
OCTETS = {"Content-Type": "application/octet-stream"}


@pytest.fixture(scope="module")
def pann(digits, digits_mlp):
    pann, _ = convert(digits_mlp, digits, degree=7)
    return pann.double().eval()


@pytest.fixture(scope="module")
def plan(pann, digits):
    return he_backend.compile(pann, digits.input_shape, min_scale_bits=25)  # N = 8192: quick


@contextlib.contextmanager
def serving(app, **config):
    """``app`` on a free loopback port in a thread; yields its URL. ``config``: uvicorn.Config's
    options (default: warnings only)."""
    server = uvicorn.Server(uvicorn.Config(app, **{"log_level": "warning", **config}))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + TIMEOUT
    while not server.started:
        assert time.time() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield "http://127.0.0.1:%d" % sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def url(plan):
    with serving(create_app(plan, LIMITS)) as address:
        yield address


@pytest.fixture(scope="module")
def remote(url):
    return RemoteClient(url, timeout=TIMEOUT)


def reference(pann, x):
    with torch.no_grad():
        return pann(torch.as_tensor(x, dtype=torch.float64)).numpy()


def post(url, path, body, content_type="application/octet-stream", **headers):
    response = httpx.post(url + path, content=body, timeout=TIMEOUT, headers={"Content-Type": content_type, **headers})
    return response.status_code, (response.content if response.status_code < 400 else response.json()["detail"])


def raw_request(url, method, path, headers, body_parts=()):
    """Send headers (and raw body parts) by hand; the status and detail of the answer."""
    connection = http.client.HTTPConnection(url.removeprefix("http://"), timeout=TIMEOUT)
    try:
        connection.putrequest(method, path)
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.endheaders()
        for part in body_parts:
            connection.send(part)
        response = connection.getresponse()
        return response.status, json.loads(response.read())["detail"]
    finally:
        connection.close()


def test_remote_inference_matches_the_plaintext_pann(remote, pann, digits):
    x = digits.x_test[:3].numpy()
    out = remote.infer(x)
    ref = reference(pann, x)
    assert np.abs(out - ref).max() < 1e-2 * np.abs(ref).max()
    assert (out.argmax(1) == ref.argmax(1)).all()


def test_health_and_layout_without_weights(url, plan):
    health = httpx.get(url + "/health", timeout=TIMEOUT).json()
    assert health["status"] == "ok" and health["depth"] == plan.depth
    layout = httpx.get(url + "/layout", timeout=TIMEOUT).content
    assert he_backend.PlanLayout.from_bytes(layout) == plan.layout()
    gather = 8 * len(plan.layout().input_gather)  # the replicated input layout: 8 bytes a slot
    assert len(layout) < 2000 + gather < len(plan.to_bytes())  # the weights stay on the server
    bundle = he_backend.ClientBundle.from_bytes(httpx.get(url + "/client-bundle", timeout=TIMEOUT).content)
    assert bundle.layout == plan.layout() and bundle.input_range is None


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
    status, detail = raw_request(url, "POST", f"/sessions/{remote.session}/infer",  # announce 20 MB, send nothing
                                 {"Content-Length": str(LIMITS.max_body_bytes + 1), **OCTETS})
    assert status == 413 and "exceeds the limit" in detail


def _chunk(data):
    return b"%x\r\n%s\r\n" % (len(data), data)


def test_a_chunked_body_is_capped_while_it_streams(url, remote):
    block = bytes(1 << 20)
    chunked = {"Transfer-Encoding": "chunked", **OCTETS}
    parts = [_chunk(block)] * (LIMITS.max_body_bytes // len(block) + 2) + [b"0\r\n\r\n"]
    try:
        status, detail = raw_request(url, "POST", f"/sessions/{remote.session}/infer", chunked, parts)
    except (BrokenPipeError, ConnectionResetError):
        pytest.fail("the server closed the connection without answering 413")
    assert status == 413 and f"exceeds the limit of {LIMITS.max_body_bytes} bytes" in detail
    status, detail = raw_request(url, "POST", f"/sessions/{remote.session}/infer", chunked,  # under the limit: read
                                 [_chunk(block), b"0\r\n\r\n"])
    assert status == 400 and "not a polyact" in detail


def test_bodies_must_be_octet_streams(url, remote, digits):
    payload = remote.client.encrypt(digits.x_test[:1].numpy())
    for kind in ("application/x-www-form-urlencoded", "application/json", ""):
        status, detail = post(url, f"/sessions/{remote.session}/infer", payload, content_type=kind)
        assert status == 415 and "application/octet-stream" in detail
    status, _ = post(url, f"/sessions/{remote.session}/infer", payload, content_type="application/octet-stream; x=1")
    assert status == 200


def _reheader(payload, **fields):
    """``payload`` with header fields replaced."""
    (size,) = struct.unpack("<I", payload[len(MAGIC): len(MAGIC) + 4])
    start = len(MAGIC) + 4
    meta = json.dumps({**json.loads(payload[start: start + size]), **fields}).encode()
    return MAGIC + struct.pack("<I", len(meta)) + meta + payload[start + size:]


@pytest.mark.parametrize("fields", [{"sections": "ab"}, {"sections": [1, "x"]}, {"samples": "1"}, {"samples": None},
                                    {"per_ciphertext": 0}, {"block": "64"}, {"kind": 5}, {"key": ["x"]}])
def test_every_malformed_header_field_is_a_400(url, remote, digits, fields):
    payload = _reheader(remote.client.encrypt(digits.x_test[:1].numpy()), **fields)
    status, detail = post(url, f"/sessions/{remote.session}/infer", payload)
    assert status == 400 and "bad ciphertexts" in detail


def test_garbled_and_mismatched_ciphertexts(url, remote, digits, plan):
    payload = remote.client.encrypt(digits.x_test[:1].numpy())
    for damaged in (payload[: len(payload) // 2], payload[:-300] + bytes(300)):
        status, detail = post(url, f"/sessions/{remote.session}/infer", damaged)
        assert status == 400 and "bad ciphertexts" in detail
    status, detail = post(url, "/sessions", b"POLYACT" + bytes(100))
    assert status == 400 and "bad public context" in detail


def test_session_a_with_session_b_ciphertexts_is_a_400(url, digits):
    a, b = RemoteClient(url, timeout=TIMEOUT), RemoteClient(url, timeout=TIMEOUT)
    try:
        status, detail = post(url, f"/sessions/{a.session}/infer", b.client.encrypt(digits.x_test[:1].numpy()))
        assert status == 400 and f"fingerprint '{b.client.keys.fingerprint}'" in detail
        assert a.client.keys.fingerprint in detail
    finally:
        a.close()
        b.close()


def test_unknown_session_and_renewal_of_a_lost_session(url, digits, pann):
    status, detail = post(url, "/sessions/nope/infer", b"x")
    assert status == 404 and "POST /sessions" in detail
    with RemoteClient(url, timeout=TIMEOUT) as client:
        lost = client.session
        assert httpx.delete(f"{url}/sessions/{lost}", timeout=TIMEOUT).status_code == 200  # as if it had expired
        x = digits.x_test[:1].numpy()
        assert (client.infer(x).argmax(1) == reference(pann, x).argmax(1)).all()
        assert client.session != lost


def test_transport_errors_are_retried(url, monkeypatch):
    client = RemoteClient(url, timeout=TIMEOUT, retries=2)
    real, calls = client.http.request, []

    def flaky(*args, **kwargs):
        calls.append(args)
        if len(calls) <= 2:
            raise httpx.ConnectError("connection refused")
        return real(*args, **kwargs)

    monkeypatch.setattr(client.http, "request", flaky)
    assert json.loads(client._request("GET", "/health"))["status"] == "ok" and len(calls) == 3
    calls.clear()
    client.retries = 1
    with pytest.raises(httpx.ConnectError):
        client._request("GET", "/health")
    assert len(calls) == 2
    monkeypatch.undo()
    client.close()


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


@pytest.mark.slow
def test_tokens_are_required_and_sessions_bounded_per_token(plan, tmp_path, digits):
    good, other = "g" * 32, "o" * 32
    (tmp_path / "tokens").write_text(f"# service tokens\n{good} 2\n{other}\n")
    tokens = Tokens.from_file(tmp_path / "tokens", default_quota=5)
    with serving(create_app(plan, LIMITS, tokens)) as address:
        for headers in ({}, {"Authorization": "Bearer " + "x" * 32}, {"Authorization": good}):
            response = httpx.get(address + "/client-bundle", headers=headers, timeout=TIMEOUT)
            assert response.status_code == 401 and "Bearer" in response.json()["detail"]
        with pytest.raises(ServiceError, match="HTTP 401"):
            RemoteClient(address, timeout=TIMEOUT)
        first = RemoteClient(address, timeout=TIMEOUT, token=good)
        second = RemoteClient(address, timeout=TIMEOUT, client=first.client, token=good)
        with pytest.raises(ServiceError, match="HTTP 429.*quota of 2 sessions"):
            RemoteClient(address, timeout=TIMEOUT, client=first.client, token=good)
        x = digits.x_test[:1].numpy()
        stranger = {"Authorization": f"Bearer {other}", **OCTETS}  # another token does not see these sessions
        response = httpx.post(f"{address}/sessions/{first.session}/infer", content=first.client.encrypt(x),
                              headers=stranger, timeout=TIMEOUT)
        assert response.status_code == 404
        assert httpx.delete(f"{address}/sessions/{first.session}", headers=stranger, timeout=TIMEOUT).status_code == 404
        assert first.infer(x).shape == (1, 10)
        second.close()
        third = RemoteClient(address, timeout=TIMEOUT, client=first.client, token=good)  # the quota frees up
        third.close()
        first.close()
    with pytest.raises(ValueError, match="at least 16 characters"):
        (tmp_path / "bad").write_text("short 2\n")
        Tokens.from_file(tmp_path / "bad", 1)


def _budget(sessions):
    """Limits with a memory budget for this process, a 64 MiB weight cache and ``sessions`` sessions."""
    return lambda plan: ServiceLimits(session_ttl=600, max_sessions=12, max_body_bytes=64_000_000, cache_bytes=64 << 20,
                                      max_memory_bytes=rss_bytes() + (64 << 20) + evaluation_bytes(plan)
                                      + int(sessions * session_bytes(plan)) + upload_bytes(plan))


def test_memory_budget_refuses_sessions_before_reading_them(plan, digits):
    cost, extra = session_bytes(plan), upload_bytes(plan)
    client = he_backend.Client(plan)
    limits = _budget(2.5)(plan)  # room for two sessions, not three
    budget = limits.max_memory_bytes
    with serving(create_app(plan, limits)) as address:
        held = [post(address, "/sessions", client.public_context())[1] for _ in range(2)]
        assert all(isinstance(h, bytes) for h in held), held
        status, detail = raw_request(address, "POST", "/sessions",  # a 15 MB context announced, never sent
                                     {"Content-Length": "15000000", **OCTETS})
        assert status == 503 and "memory budget" in detail
        health = httpx.get(address + "/health", timeout=TIMEOUT).json()
        assert health["sessions"] == 2 and health["memory"]["reserved_bytes"] + cost > budget - extra
        assert httpx.delete(f"{address}/sessions/{json.loads(held[0])['session']}", timeout=TIMEOUT).status_code == 200
        status, _ = post(address, "/sessions", client.public_context())
        assert status == 200
    with pytest.raises(ValueError, match="cannot hold one session"):
        create_app(plan, ServiceLimits(max_memory_bytes=rss_bytes()))


def test_a_full_table_answers_before_reading_the_context(plan):
    limits = ServiceLimits(session_ttl=600, max_sessions=1, max_body_bytes=64_000_000)
    with serving(create_app(plan, limits)) as address:
        status, _ = post(address, "/sessions", he_backend.Client(plan).public_context())
        assert status == 200
        status, detail = raw_request(address, "POST", "/sessions", {"Content-Length": "15000000", **OCTETS})
        assert status == 503 and "maximum of 1 sessions" in detail


@pytest.mark.slow
def test_rss_stays_within_the_budget_over_50_session_cycles(plan, digits):
    client = he_backend.Client(plan)
    x = digits.x_test[:1].numpy()
    client.encrypt(x)
    limits = _budget(2)(plan)
    budget = limits.max_memory_bytes
    with serving(create_app(plan, limits)) as address:
        peak = 0
        for _ in range(50):
            key = json.loads(post(address, "/sessions", client.public_context())[1])["session"]
            status, result = post(address, f"/sessions/{key}/infer", client.encrypt(x))
            assert status == 200 and client.decrypt(result).shape == (1, 10)
            assert httpx.delete(f"{address}/sessions/{key}", timeout=TIMEOUT).status_code == 200
            peak = max(peak, rss_bytes())
    assert peak <= budget, f"RSS peaked at {peak / 2**20:.0f} MiB over a budget of {budget / 2**20:.0f} MiB"


@pytest.mark.slow
def test_concurrent_clients_lose_nothing(url, pann, digits):
    """8 sessions at once, each sending its requests one after another; every answer is its own
    image's logits (compared as values: a swapped answer of the same class would pass an argmax)."""
    clients, requests = 8, 2
    x = digits.x_test[: clients * requests].numpy()
    remotes = [RemoteClient(url, timeout=TIMEOUT) for _ in range(clients)]

    def work(c):
        return [(c * requests + r, remotes[c].infer(x[c * requests + r])) for r in range(requests)]

    with ThreadPoolExecutor(clients) as pool:
        results = [item for batch in pool.map(work, range(clients)) for item in batch]
    assert sorted(i for i, _ in results) == list(range(clients * requests))
    out = np.concatenate([o for _, o in sorted(results, key=lambda t: t[0])])
    ref = reference(pann, x)
    assert (out.argmax(1) == ref.argmax(1)).all()
    assert (np.abs(out - ref).max(1) < 1e-2 * np.abs(ref).max(1)).all()
    for r in remotes:
        r.close()


def _self_signed(folder):
    """A certificate for 127.0.0.1 made with the openssl command (skip without it)."""
    if shutil.which("openssl") is None:
        pytest.skip("TLS test needs the openssl command")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=TIMEOUT)
    return cert, key


@pytest.mark.slow
@pytest.mark.isolated(alone=True)  # its own interpreter: the module's sessions leave SEAL's pool at its peak
def test_polyact_serve_a_bundle_over_tls_with_tokens(pann, digits, tmp_path):
    path = tmp_path / "mlp.pann"
    save_pann(pann, path, input_shape=digits.input_shape, input_range=(0.0, 1.0))
    assert main(["compile", str(path), "--min-scale-bits", "25", "--out", str(tmp_path / "deploy")]) == 0
    cert, key = _self_signed(tmp_path)
    token = "t" * 40
    (tmp_path / "tokens").write_text(token + "\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    process = subprocess.Popen([sys.executable, "-m", "polyact", "serve", str(tmp_path / "deploy"), "--port", str(port),
                                "--token-file", str(tmp_path / "tokens"), "--max-memory-gb", "3",
                                "--ssl-certfile", str(cert), "--ssl-keyfile", str(key)],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"https://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                client = RemoteClient(url, timeout=TIMEOUT, token=token, verify=str(cert), retries=0)
                break
            except httpx.TransportError:
                if process.poll() is not None or time.time() > deadline:
                    process.kill()
                    pytest.fail(f"no HTTPS answer from polyact serve: {process.communicate(timeout=10)[1].decode()[-2000:]}")
                time.sleep(0.3)
        assert client.client.input_range == (0.0, 1.0)  # the client bundle came along
        x = digits.x_test[:2].numpy()
        assert (client.infer(x).argmax(1) == reference(pann, x).argmax(1)).all()
        with pytest.raises(httpx.TransportError):  # plain HTTP is not served
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=TIMEOUT)
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):  # nor an unverified certificate
            httpx.get(url + "/health", timeout=TIMEOUT)
        client.close()
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

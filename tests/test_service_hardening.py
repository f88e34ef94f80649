"""The service under attack: fuzzed headers, disconnects, slow uploads, padded keys, concurrent
bodies and the access log."""
import functools
import json
import logging
import socket
import struct
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_service import serving as serving_on_loopback

import he_backend
from he_backend.protocol.keys import PUBLIC_KIND, KeyHolder
from he_backend.protocol.serialization import MAGIC, pack, unpack
from he_backend.service.app import ServiceLimits, create_app, redact
from he_backend.service.memory import (
    context_limit,
    evaluation_bytes,
    rss_bytes,
    session_bytes,
    upload_bytes,
)
from polyact.convert.pipeline import convert

TIMEOUT = 60  # seconds, for every HTTP call
pytestmark = pytest.mark.isolated  # CKKS memory: this module runs in its own interpreter (tests/isolation.py)

OCTETS = {"Content-Type": "application/octet-stream"}
JSON = st.recursive(st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
                    | st.text(max_size=12), lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)
ODD = JSON | st.sampled_from([10**6, [[1]], 5, "64", [1, "x"], -1, 0, [10**9]])


# on a free loopback port in a thread, logging left as it is (the tests attach their own handler)
serving = functools.partial(serving_on_loopback, log_config=None, log_level="info", access_log=False)


def post(url, path, body):
    response = httpx.post(url + path, content=body, timeout=TIMEOUT, headers=OCTETS)
    return response.status_code, (response.content if response.status_code < 400 else response.json()["detail"])


@pytest.fixture(scope="module")
def plan(digits, digits_mlp):
    pann, _ = convert(digits_mlp, digits, degree=7)
    return he_backend.compile(pann.double().eval(), digits.input_shape, min_scale_bits=25)


@pytest.fixture(scope="module")
def client(plan):
    return he_backend.Client(plan)


def _reheader(payload, change):
    """``payload`` (a polyact container) with its JSON header changed by ``change(header)``."""
    (size,) = struct.unpack("<I", payload[len(MAGIC) : len(MAGIC) + 4])
    start = len(MAGIC) + 4
    header = json.loads(payload[start : start + size])
    change(header)
    meta = json.dumps(header).encode()
    return MAGIC + struct.pack("<I", len(meta)) + meta + payload[start + size :]


def _field_change(draw, keys):
    key = draw(st.sampled_from(keys))
    if draw(st.integers(0, 4)) == 0:
        return key, lambda header: header.pop(key, None)
    value = draw(ODD)
    return key, lambda header: header.__setitem__(key, value)


@pytest.mark.parametrize("case, field", [({"scale_bits": None}, "scale_bits"), ({"scale_bits": [25]}, "scale_bits"),
                                         ({"rotations": 5}, "rotations"), ({"rotations": [[1]]}, "rotations")])
def test_malformed_context_fields_are_400s_naming_the_field(plan, client, case, field):
    # planted: load_public_context's field checks removed -> 500 (KeyError / TypeError)
    app = TestClient(create_app(plan, ServiceLimits(max_sessions=4)), raise_server_exceptions=False)
    body = _reheader(client.public_context(), lambda h: h.update(case) if case[field] is not None else h.pop(field))
    response = app.post("/sessions", content=body, headers=OCTETS)
    assert response.status_code == 400 and f"'{field}'" in response.json()["detail"]


def test_per_ciphertext_beyond_the_plan_is_a_400(plan, client, digits):
    # planted: the per_ciphertext bound removed -> 200 for 10^6 samples per ciphertext
    app = TestClient(create_app(plan, ServiceLimits(max_sessions=4)), raise_server_exceptions=False)
    key = app.post("/sessions", content=client.public_context(), headers=OCTETS).json()["session"]
    body = _reheader(client.encrypt(digits.x_test[:1].numpy()), lambda h: h.update(per_ciphertext=10**6, samples=10**6))
    response = app.post(f"/sessions/{key}/infer", content=body, headers=OCTETS)
    assert response.status_code == 400 and "'per_ciphertext'" in response.json()["detail"]


@pytest.mark.parametrize("target", ["context", "ciphertexts"])
def test_fuzzed_headers_never_get_a_500(plan, client, digits, target):
    # planted: any one field check (scale_bits, rotations, per_ciphertext) removed -> a 500 here
    app = TestClient(create_app(plan, ServiceLimits(max_sessions=400)), raise_server_exceptions=False)
    key = app.post("/sessions", content=client.public_context(), headers=OCTETS).json()["session"]
    header, sections = unpack(client.public_context(), PUBLIC_KIND)  # without its Galois keys: a small body
    context = pack(PUBLIC_KIND, {k: v for k, v in header.items() if k not in ("kind", "sections")}, sections[:2])
    batch = client.encrypt(digits.x_test[:2].numpy())
    statuses = []

    @settings(max_examples=260, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def one(data):
        base = context if target == "context" else batch
        keys = ["kind", "sections", "scale_bits", "rotations"] if target == "context" else \
            ["kind", "sections", "samples", "per_ciphertext", "block", "input_length", "output_length", "key",
             "coeff_bits", "poly_modulus_degree", "input_layout"]
        body = base
        for _ in range(data.draw(st.integers(1, 3))):
            field, change = _field_change(data.draw, keys)
            body = _reheader(body, change)
        path = "/sessions" if target == "context" else f"/sessions/{key}/infer"
        response = app.post(path, content=body, headers=OCTETS)
        statuses.append(response.status_code)
        assert response.status_code < 500, response.text
        if response.status_code == 200 and target == "context":
            app.delete(f"/sessions/{response.json()['session']}")

    one()
    assert len(statuses) >= 250 and statuses.count(400) > 200


class Lines(logging.Handler):
    """Keeps every formatted record, with its traceback."""

    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(logging.Formatter("%(message)s").format(record))


@pytest.fixture
def logs():
    handler = Lines()
    loggers = [logging.getLogger(name) for name in ("uvicorn.error", "uvicorn.access")]
    for logger in loggers:
        logger.addHandler(handler)
    yield handler.lines
    for logger in loggers:
        logger.removeHandler(handler)


def _connect(address):
    host, port = address.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=TIMEOUT)


def _start_post(address, path, length):
    sock = _connect(address)
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
                 f"Content-Length: {length}\r\n\r\n".encode())
    return sock


def test_disconnects_are_quiet_and_free_their_bytes(plan, client, digits, logs):
    # planted: ClientDisconnect not caught in _body -> "Exception in ASGI application" with a traceback
    limits = ServiceLimits(session_ttl=600, max_sessions=4, max_body_bytes=64_000_000)
    with serving(create_app(plan, limits)) as address:
        key = json.loads(post(address, "/sessions", client.public_context())[1])["session"]
        payload = client.encrypt(digits.x_test[:4].numpy())
        for path, body in ((f"/sessions/{key}/infer", payload), ("/sessions", client.public_context())):
            sock = _start_post(address, path, len(body))
            sock.sendall(body[: len(body) // 2])  # half a body, then gone
            sock.close()
            sock = _start_post(address, path, len(body))
            sock.sendall(body)  # a whole body, gone while the server computes
            sock.close()
        deadline = time.monotonic() + TIMEOUT  # the abandoned inferences finish, then free their bytes
        while (health := httpx.get(address + "/health", timeout=TIMEOUT).json())["memory"]["inflight_bytes"]:
            assert time.monotonic() < deadline, health
            time.sleep(0.2)
        status, result = post(address, f"/sessions/{key}/infer", payload)
    assert status == 200 and client.decrypt(result).shape == (4, 10)
    assert health["sessions"] <= 2 and health["memory"]["inflight_bytes"] == 0  # an orphan expires with the TTL
    assert not [line for line in logs if "Traceback" in line or "Exception" in line], logs


def test_slow_uploads_hold_no_slot_and_time_out(plan, client):
    # planted: the slot reserved before the body (as before) -> the honest client gets 503
    limits = ServiceLimits(session_ttl=2, max_sessions=2, max_body_bytes=64_000_000, upload_timeout=4.0)
    context = client.public_context()
    with serving(create_app(plan, limits)) as address:
        slow = [_start_post(address, "/sessions", len(context)) for _ in range(4)]
        for sock in slow:
            sock.sendall(context[:1000])
        time.sleep(0.5)
        start = time.monotonic()
        status, answer = post(address, "/sessions", context)
        assert status == 200, answer
        assert time.monotonic() - start < 3.5  # the honest client did not wait for the trickling ones
        answers = []
        for sock in slow:
            sock.settimeout(TIMEOUT)
            answers.append(sock.recv(200))
            sock.close()
    assert all(a.startswith(b"HTTP/1.1 408") for a in answers), answers  # the deadline cuts them off


def _padded_context(plan, extra):
    """A public context for ``plan`` carrying Galois keys for ``extra`` more rotation steps;
    its header declares only the plan's rotations."""
    public = KeyHolder(plan.params, list(plan.rotations) + extra).public_context()
    return _reheader(public, lambda h: h.update(rotations=sorted(set(plan.rotations))))


def test_unneeded_galois_keys_are_refused(plan, client):
    # planted: the Galois key count check removed -> the padded context gets a session (200);
    # the rotations check removed -> the declared extra key gets a session; context_limit -> no 413
    app = TestClient(create_app(plan, ServiceLimits(max_sessions=4)), raise_server_exceptions=False)
    extra = [s for s in range(1, 64) if s not in plan.rotations][:4]
    padded = _padded_context(plan, extra)  # the header declares only the plan's rotations
    response = app.post("/sessions", content=padded, headers=OCTETS)
    assert response.status_code == 400 and f"carries {len(plan.rotations) + 4} Galois keys" in response.json()["detail"]
    declared = KeyHolder(plan.params, list(plan.rotations) + extra[:1]).public_context()
    response = app.post("/sessions", content=declared, headers=OCTETS)
    assert response.status_code == 400 and "does not use" in response.json()["detail"]
    response = app.post("/sessions", content=b"x", headers={**OCTETS, "Content-Length": str(context_limit(plan) + 1)})
    assert response.status_code == 413 and "Galois keys of the plan's rotations" in response.json()["detail"]
    assert app.post("/sessions", content=client.public_context(), headers=OCTETS).status_code == 200


def test_bodies_in_flight_count_against_the_budget(plan, client):
    # planted: _body not holding its bytes (table.hold) -> every concurrent body is read in full
    cost, extra = session_bytes(plan), upload_bytes(plan)
    base = rss_bytes() + (64 << 20) + evaluation_bytes(plan)
    limits = ServiceLimits(session_ttl=600, max_sessions=8, max_body_bytes=200_000_000, cache_bytes=64 << 20,
                           max_memory_bytes=base + cost + extra + (150 << 20))
    with serving(create_app(plan, limits)) as address:
        key = json.loads(post(address, "/sessions", client.public_context())[1])["session"]
        chunk = bytes(1 << 20)

        def flood(_):
            sock = _start_post(address, f"/sessions/{key}/infer", 100_000_000)
            try:
                for _ in range(100):
                    sock.sendall(chunk)
            except OSError:  # the server answered 503 and closed
                pass
            sock.settimeout(TIMEOUT)
            answer = sock.recv(300)
            sock.close()
            return answer

        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(flood, range(6)))
        health = httpx.get(address + "/health", timeout=TIMEOUT).json()
    assert all(a.startswith(b"HTTP/1.1 503") or a.startswith(b"HTTP/1.1 400") for a in answers), answers
    assert sum(a.startswith(b"HTTP/1.1 503") for a in answers) >= 5
    assert health["memory"]["rss_bytes"] <= 1.1 * limits.max_memory_bytes
    assert health["memory"]["reserved_bytes"] <= limits.max_memory_bytes


def test_the_access_log_holds_no_session_id(plan, client, logs):
    # planted: the RedactSessions filter not installed -> the id appears in the access log
    with serving(create_app(plan, ServiceLimits(max_sessions=4)), access_log=True) as address:
        key = json.loads(post(address, "/sessions", client.public_context())[1])["session"]
        assert httpx.delete(f"{address}/sessions/{key}", timeout=TIMEOUT).status_code == 200
    access = [line for line in logs if "/sessions/" in line]
    assert access and not [line for line in logs if key in line], logs
    assert any(redact(f"/sessions/{key}") in line for line in access)
    assert redact(f"/sessions/{key}/infer?x=1") == f"/sessions/#{redact('/sessions/' + key)[11:]}/infer?x=1"

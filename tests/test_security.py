"""Keys and ciphertexts are bound to each other, key files are private, and the container's own
checks (not SEAL's) refuse malformed bytes."""
import json
import os
import stat
import struct

import pytest

import he_backend
from he_backend.protocol.serialization import MAGIC, PayloadError, pack, unpack
from polyact.convert.pipeline import convert

pytestmark = pytest.mark.isolated  # CKKS memory: this module runs in its own interpreter (tests/isolation.py)


@pytest.fixture(scope="module")
def plan(digits, digits_mlp):
    pann, _ = convert(digits_mlp, digits, degree=3)
    return he_backend.compile(pann.double().eval(), digits.input_shape, min_scale_bits=25)  # N = 8192


@pytest.fixture(scope="module")
def pair(plan):
    client = plan.client()
    return client, he_backend.Server(plan, client.public_context())


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_key_files_are_written_0600(pair, plan, tmp_path):
    client, _ = pair
    fresh, existing = tmp_path / "fresh.key", tmp_path / "existing.key"
    existing.write_bytes(b"old")
    existing.chmod(0o644)
    old_umask = os.umask(0)  # the most permissive umask: the mode must not come from it
    try:
        client.save(fresh)
        client.save(existing)
    finally:
        os.umask(old_umask)
    assert _mode(fresh) == 0o600 and _mode(existing) == 0o600
    again = he_backend.Client.load(plan, existing)
    assert again.keys.fingerprint == client.keys.fingerprint


def test_ciphertexts_for_other_keys_are_refused_by_name(pair, plan, digits):
    client, server = pair
    other = plan.client()
    assert other.keys.fingerprint != client.keys.fingerprint
    with pytest.raises(PayloadError, match=rf"fingerprint '{other.keys.fingerprint}'.*{client.keys.fingerprint}"):
        server.run(other.encrypt(digits.x_test[:1].numpy()))
    result = server.run(client.encrypt(digits.x_test[:1].numpy()))
    with pytest.raises(PayloadError, match="not this client's"):
        other.decrypt(result)


def test_the_fingerprint_is_the_sha256_of_the_public_context(pair):
    import hashlib

    client, server = pair
    assert client.keys.fingerprint == hashlib.sha256(client.public_context()).hexdigest() == server.fingerprint


def _header_of(payload):
    (size,) = struct.unpack("<I", payload[len(MAGIC): len(MAGIC) + 4])
    return json.loads(payload[len(MAGIC) + 4: len(MAGIC) + 4 + size])


@pytest.mark.parametrize("damage", [
    lambda b: b + b"\x00",  # one trailing byte
    lambda b: b + bytes(4096),  # padding
    lambda b: b[:-1],  # one byte short
    lambda b: b[:-5000],  # truncated inside the last section
])
def test_the_container_checks_its_own_length(pair, digits, damage):
    client, server = pair
    payload = client.encrypt(digits.x_test[:2].numpy())
    announced = len(payload)
    damaged = damage(payload)
    message = rf"^truncated or padded ciphertexts: the header announces {announced} bytes, got {len(damaged)}$"
    with pytest.raises(PayloadError, match=message):
        unpack(damaged, "ciphertexts")
    with pytest.raises(PayloadError, match=message):  # the server refuses before SEAL sees a byte
        server.run(damaged)


def test_a_header_longer_than_the_bytes_is_truncation():
    data = MAGIC + struct.pack("<I", 1000) + b'{"kind": "x"}'
    with pytest.raises(PayloadError, match="truncated x: the header alone announces 1000 bytes"):
        unpack(data, "x")


@pytest.mark.parametrize("sections", ["ab", [1, "2"], [-1, 3], [1.5], {"a": 1}, [True]])
def test_malformed_section_lists_are_payload_errors(sections):
    data = pack("x", {}, [b"abc"])
    meta = json.dumps({"kind": "x", "sections": sections}).encode()
    forged = MAGIC + struct.pack("<I", len(meta)) + meta + b"abc"
    with pytest.raises(PayloadError, match="'sections' must be a list of byte counts"):
        unpack(forged, "x")
    assert unpack(data, "x")[1] == [b"abc"]


def test_the_client_warns_or_refuses_inputs_outside_the_calibrated_range(plan, digits):
    import warnings

    low, high = float(digits.x_train.min()), float(digits.x_train.max())
    bundle = he_backend.ClientBundle(plan.layout(), (low, high))
    client = he_backend.ClientBundle.from_bytes(bundle.to_bytes()).client()
    x = digits.x_test[:4].numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        client.encrypt(x)  # the test set lies in the training range: silent
        client.encrypt(x + 0.09 * (high - low))  # within the 10% margin: silent
    with pytest.warns(he_backend.InputRangeWarning, match=rf"outside the calibrated input range \[{low:.4g}, {high:.4g}\]"):
        client.encrypt(10 * x)
    with pytest.warns(he_backend.InputRangeWarning):
        client.encrypt(x - 0.11 * (high - low) - low)  # just below the margin
    strict = bundle.client(strict=True)
    with pytest.raises(ValueError, match="strict mode refuses them"):
        strict.encrypt(10 * x)

"""Fuzzing polyact's file loaders with Hypothesis over mutated valid files.

Every mutant either loads or is refused with a ``ValueError`` / ``FileNotFoundError`` that names
the file (a :class:`PayloadError` for bytes with no file); never a raw exception, never a hang
(each load runs under a 20 s alarm). Mutants: a flipped bit, overwritten, inserted or cut bytes,
and for structured files a header/payload field deleted or replaced by a value of the wrong type
(nested lists, huge numbers, long strings). Derandomized: the same examples every run. The quick
run tries 40 mutants per loader (360); the slow one 150 (60 for the two loaders that build a SEAL
context, whose memory pool keeps every context loaded: 1,170). 1,530 mutants in all.
"""
import io
import json
import pickle
import signal
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import he_backend
from he_backend.protocol.bundle import load_client_bundle, load_server_bundle, save_bundles
from he_backend.protocol.client import Client
from he_backend.protocol.keys import load_public_context
from he_backend.protocol.serialization import MAGIC, PayloadError
from polyact import data
from polyact.convert.pipeline import convert
from polyact.convert.storage import load_model, load_pann, save_model, save_pann

pytestmark = pytest.mark.isolated  # CKKS keys: this module runs in its own interpreter (tests/isolation.py)

HANG_SECONDS = 20
JSON = st.recursive(st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
                    | st.text(max_size=20), lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
ODD = JSON | st.just([[[[[[[[]]]]]]]]) | st.just(10**6) | st.just([4] * 100_000) | st.just("[" * 10_000)


@pytest.fixture(scope="module")
def files(digits, digits_mlp, tmp_path_factory):
    """Valid files and their loaders: name -> (bytes, load(path))."""
    folder = tmp_path_factory.mktemp("fuzz")
    pann, _ = convert(digits_mlp, digits, degree=3)
    save_pann(pann, folder / "a.pann", input_shape=digits.input_shape)
    save_model(digits_mlp, folder / "a.model")
    plan = he_backend.compile(pann.double().eval(), digits.input_shape, min_scale_bits=25)
    save_bundles(plan, folder / "bundle")
    client = Client(plan)
    client.save(folder / "keys")
    cifar = folder / "cifar"
    cifar.mkdir()
    for name in ("data_batch_1", "test_batch"):
        with open(cifar / name, "wb") as fh:
            pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, 2]}, fh, protocol=2)
    digits.save_npz(folder / "a.npz")
    return {
        "pann": ((folder / "a.pann").read_bytes(), load_pann),
        "model": ((folder / "a.model").read_bytes(), load_model),
        "server bundle": ((folder / "bundle/server.bundle").read_bytes(), load_server_bundle),
        "client bundle": ((folder / "bundle/client.bundle").read_bytes(), load_client_bundle),
        "key file": ((folder / "keys").read_bytes(), lambda path: Client.load(plan, path)),
        "public context": (client.public_context(), lambda path: load_public_context(Path(path).read_bytes())),
        "cifar batch": ((cifar / "data_batch_1").read_bytes(), data.read_cifar_batch),
        "idx": (b"\x00\x00\x08\x03" + struct.pack(">3I", 2, 4, 4) + bytes(32), data.read_idx),
        "npz": ((folder / "a.npz").read_bytes(), data.load_npz),
    }


@st.composite
def mutants(draw, raw: bytes) -> bytes:
    """A mutant of ``raw``: bytes changed, or (structured files) one field changed."""
    if draw(st.booleans()):
        field = _field_mutant(draw, raw)
        if field is not None:
            return field
    data = bytearray(raw)
    at = draw(st.integers(0, len(data) - 1))
    kind = draw(st.sampled_from(["flip", "overwrite", "insert", "cut"]))
    if kind == "flip":
        data[at] ^= 1 << draw(st.integers(0, 7))
    elif kind == "overwrite":
        data[at : at + 8] = draw(st.binary(min_size=1, max_size=8))
    elif kind == "insert":
        data[at:at] = draw(st.binary(min_size=1, max_size=64))
    else:
        del data[at:]
    return bytes(data)


def _field_mutant(draw, raw: bytes) -> bytes | None:
    if raw.startswith(MAGIC):  # a polyact container: its JSON header
        (size,) = struct.unpack("<I", raw[8:12])
        header = json.loads(raw[12 : 12 + size])
        key = draw(st.sampled_from(sorted(header)))
        if draw(st.booleans()):
            del header[key]
        else:
            header[key] = draw(ODD)
        meta = json.dumps(header).encode()
        return MAGIC + struct.pack("<I", len(meta)) + meta + raw[12 + size :]
    if raw.startswith(b"PK") and b"data.pkl" in raw:  # a torch-saved payload
        payload = torch.load(io.BytesIO(raw), weights_only=True)
        key = draw(st.sampled_from(sorted(payload)))
        change = draw(st.sampled_from(["delete", "value", "json"]))
        if change == "delete":
            del payload[key]
        elif change == "value":
            payload[key] = draw(ODD)
        else:
            payload[key] = json.dumps(draw(ODD | st.just({"name": "mlp", "input_shape": [1, 8, 8],
                                                           "num_classes": 10, "hidden": [4] * 100_000})))
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        return buffer.getvalue()
    return None


def _alarm(*_):
    raise TimeoutError(f"a load ran past {HANG_SECONDS} s")


def _fuzz(files, name, examples, tmp_path):
    raw, load = files[name]
    path = tmp_path / f"mutant-{name.replace(' ', '-')}"

    @settings(max_examples=examples, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(mutants(raw))
    def one(mutant):
        path.write_bytes(mutant)
        previous = signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(HANG_SECONDS)
        try:
            load(path)
        except (ValueError, FileNotFoundError) as exc:
            named = path.name in str(exc) or (name == "public context" and isinstance(exc, PayloadError))
            assert named, f"{name}: the error does not name the file: {exc}"
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)

    one()


SEAL_CONTEXTS = {"key file", "public context"}  # 150 mutants each: about 1.7 GiB more of SEAL's pool
LOADERS = ["pann", "model", "server bundle", "client bundle", "key file", "public context", "cifar batch", "idx", "npz"]


@pytest.mark.parametrize("name", LOADERS)
def test_mutated_files_are_loaded_or_refused_by_name(files, name, tmp_path):
    # planted: storage's field checks, bundle file naming, unpack's RecursionError, read_npz's size
    # check or the CIFAR field checks removed -> the loader's examples fail (raw exception / unnamed)
    _fuzz(files, name, 40, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", LOADERS)
def test_many_mutated_files_are_loaded_or_refused_by_name(files, name, tmp_path):
    _fuzz(files, name, 60 if name in SEAL_CONTEXTS else 150, tmp_path)


def test_a_pann_declaring_a_huge_architecture_is_refused_fast(files, tmp_path):
    # planted: no meta-device probe -> load_pann builds 100,000 layers (minutes, GBs)
    payload = torch.load(io.BytesIO(files["pann"][0]), weights_only=True)
    for hidden in ([4] * 100_000, [1 << 30]):
        payload["factory"] = "polyact.models:build_model"
        payload["factory_kwargs"] = json.dumps({"name": "mlp", "input_shape": [1, 8, 8], "num_classes": 10,
                                                "hidden": hidden})
        torch.save(payload, tmp_path / "huge.pann")
        with pytest.raises(ValueError, match=r"huge.pann: field 'factory_kwargs' (lists more entries|build a model of)"):
            load_pann(tmp_path / "huge.pann")


def test_torchscript_is_refused_without_loading_it(tmp_path, monkeypatch, capsys):
    # planted: the zip-layout check removed -> torch.jit.load runs the file (the CLI's old probe)
    from polyact.cli.commands import main

    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(64, 10)), path)
    loads = []
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: loads.append(a))
    with pytest.raises(ValueError, match="scripted.pt is TorchScript"):
        load_pann(path)
    assert main(["convert", "--model", str(path), "--dataset", "digits"]) == 2
    assert "scripted.pt is TorchScript" in capsys.readouterr().err
    assert loads == []


def test_a_deeply_nested_header_is_a_named_refusal(files, tmp_path):
    # planted: unpack without RecursionError in its except -> a raw RecursionError
    meta = b"[" * 100_000 + b"]" * 100_000
    path = tmp_path / "nested.bundle"
    path.write_bytes(MAGIC + struct.pack("<I", len(meta)) + meta)
    with pytest.raises(PayloadError, match="nested.bundle: corrupted server bundle: unreadable header"):
        load_server_bundle(path)
    with pytest.raises(PayloadError, match="unreadable header"):
        load_public_context(path.read_bytes())

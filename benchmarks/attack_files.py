"""Crafted and mutated files through polyact's loaders: how many are refused cleanly, how many
raise a raw exception, hang or run code.

Valid files (a PANN, a model, the two bundles, a private key file and a public context, a
CIFAR-10 Python batch, an IDX file, an ``.npz`` data set) are mutated with a seeded generator:
byte flips, overwrites, insertions, truncations and, for structured files, fields replaced by
values of the wrong type (JSON scalars, lists, nesting, huge numbers) or deleted. Each mutant goes
through its loader with a time limit (SIGALRM). Outcomes:

- ``ok``: loaded; ``refused``: a ``ValueError`` / ``FileNotFoundError`` naming the file (or, for
  bytes without a file, a ``PayloadError``);
- ``unnamed``: such an error that does not name the file; ``raw``: any other exception;
- ``hang``: past ``--limit`` seconds; ``code``: code from the file ran (a pickle's call, a
  TorchScript load).

Usage: python benchmarks/attack_files.py [--mutants 120] [--seed 0] [--limit 10]
Works on this tree or an older one (PYTHONPATH=OLD_TREE). Ends with one JSON line.
"""
from __future__ import annotations

import argparse
import collections
import io
import json
import os
import pickle
import resource
import signal
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

MAGIC = b"POLYACT\x01"
ODD_VALUES = [None, True, 0, -1, 1.5, 2**62, 10**30, "x", "", [], [1], [[1]], ["a", 2], {}, {"a": 1}, [[[[]]]],
              "[" * 5000, list(range(100000))]


class Hang(Exception):
    pass


def _alarm(*_):
    raise Hang


def build(folder: Path) -> dict[str, tuple[bytes, object]]:
    """Valid files in ``folder`` and their loaders: name -> (bytes, load(path))."""
    import he_backend
    from he_backend.protocol.bundle import load_client_bundle, load_server_bundle, save_bundles
    from he_backend.protocol.client import Client
    from he_backend.protocol.keys import load_public_context
    from polyact import data, models
    from polyact.convert.pipeline import convert
    from polyact.convert.storage import load_model, load_pann, save_model, save_pann

    torch.manual_seed(0)
    digits = data.digits()
    model = models.build_model("mlp", digits.input_shape, 10, hidden=(16,))
    pann, _ = convert(model, digits, degree=3)
    save_pann(pann, folder / "a.pann", input_shape=digits.input_shape)
    save_model(model, folder / "a.model")
    plan = he_backend.compile(pann.double().eval(), digits.input_shape, min_scale_bits=25)
    save_bundles(plan, folder / "bundle")
    client = Client(plan)
    client.save(folder / "keys")
    (folder / "public").write_bytes(client.public_context())
    pixels = np.random.default_rng(0).integers(0, 256, (4, 3072), dtype=np.uint8)
    cifar = folder / "cifar"
    cifar.mkdir()
    for name in ("data_batch_1", "test_batch"):
        with open(cifar / name, "wb") as fh:
            pickle.dump({b"data": pixels, b"labels": [1, 2, 3, 4], b"batch_label": b"x"}, fh, protocol=2)
    with open(folder / "idx", "wb") as fh:
        fh.write(b"\x00\x00\x08\x03" + struct.pack(">3I", 2, 4, 4) + bytes(32))
    digits.save_npz(folder / "a.npz")

    def cifar_batch(path):  # the folder loader reads data_batch_1 and test_batch
        target = path.parent / "cifar_mut"
        target.mkdir(exist_ok=True)
        os.replace(path, target / "data_batch_1")
        (target / "test_batch").write_bytes((cifar / "test_batch").read_bytes())
        try:
            return data.cifar10(target)
        finally:
            (target / "data_batch_1").rename(path)

    return {
        "pann": ((folder / "a.pann").read_bytes(), load_pann),
        "model": ((folder / "a.model").read_bytes(), load_model),
        "server bundle": ((folder / "bundle" / "server.bundle").read_bytes(), load_server_bundle),
        "client bundle": ((folder / "bundle" / "client.bundle").read_bytes(), load_client_bundle),
        "key file": ((folder / "keys").read_bytes(), lambda p: Client.load(plan, p)),
        "public context": ((folder / "public").read_bytes(), lambda p: load_public_context(Path(p).read_bytes())),
        "cifar batch": ((cifar / "data_batch_1").read_bytes(), cifar_batch),
        "idx": ((folder / "idx").read_bytes(), data.read_idx),
        "npz": ((folder / "a.npz").read_bytes(), data.load_npz),
    }


def _bytes_mutant(raw: bytes, rng: np.random.Generator) -> bytes:
    data = bytearray(raw)
    kind = rng.integers(4)
    at = int(rng.integers(len(data)))
    if kind == 0:
        data[at] ^= 1 << int(rng.integers(8))
    elif kind == 1:
        data[at : at + 8] = rng.integers(0, 256, 8, dtype=np.uint8).tobytes()
    elif kind == 2:
        data[at:at] = rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
    else:
        del data[at:]
    return bytes(data)


def _field_mutant(raw: bytes, rng: np.random.Generator) -> bytes | None:
    """A structured mutant: a field of a polyact container's JSON header, or of a torch-saved
    payload, replaced by an odd value or deleted (None if ``raw`` is neither)."""
    value = ODD_VALUES[int(rng.integers(len(ODD_VALUES)))]
    if raw.startswith(MAGIC):
        (size,) = struct.unpack("<I", raw[8:12])
        header = json.loads(raw[12 : 12 + size])
        keys = sorted(header)
        key = keys[int(rng.integers(len(keys)))]
        if rng.random() < 0.2:
            del header[key]
        else:
            header[key] = value
        meta = json.dumps(header).encode()
        return MAGIC + struct.pack("<I", len(meta)) + meta + raw[12 + size :]
    if raw.startswith(b"PK"):
        try:
            payload = torch.load(io.BytesIO(raw), weights_only=True)
        except RuntimeError:  # a zip that torch did not write (.npz)
            return None
        if not isinstance(payload, dict):
            return None
        key = sorted(payload)[int(rng.integers(len(payload)))]
        roll = rng.random()
        if roll < 0.2:
            del payload[key]
        elif roll < 0.6 or key == "state_dict":
            payload[key] = value if not isinstance(value, list) or len(value) < 1000 else [1] * 1000
        else:  # a JSON string of an odd value (or a huge architecture)
            payload[key] = json.dumps({"name": "mlp", "input_shape": [1, 8, 8], "num_classes": 10,
                                       "hidden": [4] * 200000} if rng.random() < 0.3 else value)
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        return buffer.getvalue()
    return None


def _names_file(exc: BaseException, path: Path) -> bool:
    return str(path) in str(exc) or path.name in str(exc)


def attack(files: dict, folder: Path, mutants: int, seed: int, limit: float) -> dict[str, collections.Counter]:
    from he_backend.protocol.serialization import PayloadError

    rng = np.random.default_rng(seed)
    results: dict[str, collections.Counter] = {}
    signal.signal(signal.SIGALRM, _alarm)
    for name, (raw, load) in files.items():
        counts = results.setdefault(name, collections.Counter())
        for i in range(mutants):
            mutant = (_field_mutant(raw, rng) if i % 2 else None) or _bytes_mutant(raw, rng)
            path = folder / f"mutant-{name.replace(' ', '_')}"
            path.write_bytes(mutant)
            signal.setitimer(signal.ITIMER_REAL, limit)
            try:
                load(path)
                outcome = "ok"
            except Hang:
                outcome = "hang"
            except (ValueError, FileNotFoundError) as exc:
                named = (_names_file(exc, path) or (name == "public context" and isinstance(exc, PayloadError))
                         or (name == "cifar batch" and "data_batch_1" in str(exc)))
                outcome = "refused" if named else "unnamed"
            except Exception as exc:  # noqa: BLE001 - what the attack counts
                outcome = "raw"
                counts[f"raw {type(exc).__name__}"] += 1
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            counts[outcome] += 1
    return results


def code_runs(folder: Path) -> dict[str, bool]:
    """The two ways code ran from a file: a CIFAR-10 batch that pickles a call, and a TorchScript
    file given as a model (loading TorchScript runs its code)."""
    from polyact import data
    from polyact.cli.commands import main

    marker = folder / "pwned"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    crafted = folder / "evil_cifar"
    crafted.mkdir()
    for name in ("data_batch_1", "test_batch"):
        with open(crafted / name, "wb") as fh:
            pickle.dump(Evil(), fh, protocol=2)
    try:
        data.cifar10(crafted)
    except Exception:  # noqa: BLE001
        pass
    scripted = folder / "model.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(64, 10)), scripted)
    loads = []
    original = torch.jit.load
    torch.jit.load = lambda *a, **k: loads.append(a) or original(*a, **k)
    try:
        main(["convert", "--model", str(scripted), "--dataset", "digits", "--out", str(folder / "x.pann")])
    except (Exception, SystemExit):  # noqa: BLE001
        pass
    finally:
        torch.jit.load = original
    return {"cifar pickle": marker.exists(), "torchscript": bool(loads)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mutants", type=int, default=120, help="mutants per loader")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=float, default=10.0, help="seconds before a load counts as a hang")
    args = parser.parse_args()
    torch.set_num_threads(1)
    resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))  # a declared 2^48 bytes fails fast
    start, cpu = time.time(), time.process_time()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files = build(folder)
        results = attack(files, folder, args.mutants, args.seed, args.limit)
        ran = code_runs(folder)
    total = collections.Counter()
    print(f"{'loader':16} {'mutants':>8} {'ok':>5} {'refused':>8} {'unnamed':>8} {'raw':>5} {'hang':>5}  raw kinds")
    for name, counts in results.items():
        total.update({k: v for k, v in counts.items() if not k.startswith("raw ")})
        kinds = ", ".join(f"{k[4:]} {v}" for k, v in counts.items() if k.startswith("raw "))
        print(f"{name:16} {args.mutants:8} {counts['ok']:5} {counts['refused']:8} {counts['unnamed']:8} "
              f"{counts['raw']:5} {counts['hang']:5}  {kinds}")
    print(f"code ran: {ran}; wall {time.time() - start:.1f} s, CPU {time.process_time() - cpu:.1f} s", file=sys.stderr)
    print(json.dumps({"mutants": args.mutants * len(results), **{k: total[k] for k in ("ok", "refused", "unnamed", "raw", "hang")},
                      "code_runs": sum(ran.values()), "per_loader": {k: dict(v) for k, v in results.items()}}))


if __name__ == "__main__":
    main()

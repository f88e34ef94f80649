"""Encrypted inference on digits: polyact plans for the MLP and the CNN (ReLU and GELU
converted to PANNs), and a TenSEAL network written by hand in the style of TenSEAL's
encrypted-MNIST tutorial (conv -> square -> fc -> square -> fc, im2col) against polyact's plan
of the same trained network on the same parameters.

Per network: plaintext and encrypted accuracy on the first --samples test images (batch
packing) and their prediction agreement, the precision of the decrypted logits in bits
(relative to the largest logit), the single-request latency (sample packing: encrypt, server,
decrypt; median of --repeat), the amortised server time per sample with batch packing, and
the request/response/public-context sizes. polyact's and TenSEAL's servers on the tutorial
network run interleaved per image; their ratio is reported as median and range.

Usage: python benchmarks/bench_inference.py [--samples 64] [--repeat 3] [--degree 7]
Ends with one JSON line (a list of dicts).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings

import numpy as np
import tenseal as ts
import torch
from torch import nn

import he_backend
from he_backend.eval.metrics import compare
from he_backend.eval.params import CkksParams
from polyact import data, models
from polyact.activations.fixed import Square
from polyact.convert.pipeline import convert
from polyact.train import loop as trainer

TUTORIAL_PARAMS = CkksParams(8192, (31, 26, 26, 26, 26, 26, 26, 31), 26)  # the tutorial's context


class TutorialNet(nn.Module):
    """TenSEAL's tutorial network scaled to 8x8 digits: conv(1->4, 3x3) -> x^2 -> fc(144->32)
    -> x^2 -> fc(32->10)."""

    def __init__(self, channels: int = 4, hidden: int = 32) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, channels, kernel_size=3)
        self.act1 = Square()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(channels * 36, hidden)
        self.act2 = Square()
        self.fc2 = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act2(self.fc1(self.flatten(self.act1(self.conv(x))))))


def timed(fn, repeat: int):
    """(median seconds, last result)."""
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def accuracy_columns(out: np.ndarray, ref: np.ndarray, y: np.ndarray) -> dict:
    """:func:`he_backend.eval.metrics.compare` under this benchmark's column names."""
    c = compare(out, ref, y)
    return {"plain_accuracy": c["plaintext_accuracy"], "encrypted_accuracy": c["accuracy"],
            "agreement": c["agreement"], "precision_bits": c["precision_bits"]}


def predict(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model.double()(x.double()).numpy()


def measure_plan(name: str, pann: nn.Module, digits, args, params: CkksParams | None = None) -> dict:
    """Accuracy (batch packing) and latency (sample packing) of ``pann`` compiled by polyact."""
    x, y = digits.x_test[: args.samples], digits.y_test[: args.samples].numpy()
    ref = predict(pann, x)
    row: dict = {"network": name}
    for packing in ("batch", "sample"):
        plan = he_backend.compile(pann, digits.input_shape, packing, params=params)
        client = plan.client()
        public = client.public_context()
        server = he_backend.Server.from_bytes(plan.to_bytes(), public)
        if packing == "batch":
            request = client.encrypt(x.numpy())
            seconds, response = timed(lambda: server.run(request), 1)
            out = client.decrypt(response)
            row.update(depth=plan.depth, N=plan.params.poly_modulus_degree, scale_bits=plan.params.scale_bits,
                       samples_per_ciphertext=plan.samples_per_ciphertext,
                       **accuracy_columns(out, ref, y), batch_seconds_per_sample=seconds / len(x),
                       public_context_mb=len(public) / 1e6, **plan.report()["totals"])
            continue
        one = x[:1].numpy()
        encrypt_s, request = timed(lambda: client.encrypt(one), args.repeat)
        server_s, response = timed(lambda: server.run(request), args.repeat)
        decrypt_s, _ = timed(lambda: client.decrypt(response), args.repeat)
        row.update(latency_encrypt_s=encrypt_s, latency_server_s=server_s, latency_decrypt_s=decrypt_s,
                   latency_total_s=encrypt_s + server_s + decrypt_s,
                   request_kb=len(request) / 1e3, response_kb=len(response) / 1e3)
    return row


def tenseal_tutorial(model: TutorialNet, digits, args, polyact_server) -> dict:
    """The tutorial's hand-written TenSEAL inference: im2col-encoded input, conv2d_im2col per
    channel, pack_vectors, square_, mm; one sample per request. ``polyact_server(image)`` (the
    seconds of polyact's server on the same image) runs right before each TenSEAL request, and
    the per-image ratios polyact / TenSEAL are reported as median and range."""
    p = TUTORIAL_PARAMS
    context = ts.context(ts.SCHEME_TYPE.CKKS, p.poly_modulus_degree, coeff_mod_bit_sizes=list(p.coeff_bits))
    context.global_scale = p.scale
    context.generate_galois_keys()
    kernel = model.conv.kernel_size[0]
    conv_w = model.conv.weight.detach().double().view(-1, kernel, kernel).tolist()
    conv_b = model.conv.bias.detach().double().tolist()
    fc1_w, fc1_b = model.fc1.weight.detach().double().T.tolist(), model.fc1.bias.detach().double().tolist()
    fc2_w, fc2_b = model.fc2.weight.detach().double().T.tolist(), model.fc2.bias.detach().double().tolist()

    def server(enc_x, windows):
        channels = [enc_x.conv2d_im2col(w, windows) + b for w, b in zip(conv_w, conv_b)]
        h = ts.CKKSVector.pack_vectors(channels)
        h.square_()
        h = h.mm(fc1_w) + fc1_b
        h.square_()
        return h.mm(fc2_w) + fc2_b

    x, y = digits.x_test[: args.tutorial_samples], digits.y_test[: args.tutorial_samples].numpy()
    ref = predict(model, x)
    outs, encrypt_t, server_t, decrypt_t, ratios = [], [], [], [], []
    for k, image in enumerate(x[:, 0].double().tolist()):
        start = time.perf_counter()
        enc_x, windows = ts.im2col_encoding(context, image, kernel, kernel, model.conv.stride[0])
        encrypt_t.append(time.perf_counter() - start)
        polyact_s = polyact_server(x[k : k + 1].numpy())  # interleaved: polyact, then TenSEAL, per image
        start = time.perf_counter()
        enc_y = server(enc_x, windows)
        server_t.append(time.perf_counter() - start)
        ratios.append(polyact_s / server_t[-1])
        start = time.perf_counter()
        outs.append(enc_y.decrypt())
        decrypt_t.append(time.perf_counter() - start)
    out = np.array(outs)
    return {"network": "tutorial/tenseal-handwritten", "N": p.poly_modulus_degree, "scale_bits": p.scale_bits,
            "samples": len(x), **accuracy_columns(out, ref, y),
            "latency_encrypt_s": statistics.median(encrypt_t), "latency_server_s": statistics.median(server_t),
            "latency_decrypt_s": statistics.median(decrypt_t),
            "latency_total_s": statistics.median(np.add(np.add(encrypt_t, server_t), decrypt_t)),
            "request_kb": len(enc_x.serialize()) / 1e3, "response_kb": len(enc_y.serialize()) / 1e3,
            "ratio_polyact_over_tenseal_server": {"median": statistics.median(ratios), "min": min(ratios),
                                                  "max": max(ratios)}}


def polyact_timer(pann: nn.Module, digits, params: CkksParams):
    """A function timing polyact's server (sample packing) on one image, for interleaving."""
    plan = he_backend.compile(pann, digits.input_shape, "sample", params=params)
    client = plan.client()
    server = he_backend.Server.from_bytes(plan.to_bytes(), client.public_context())

    def run(image: np.ndarray) -> float:
        request = client.encrypt(image)
        start = time.perf_counter()
        server.run(request)
        return time.perf_counter() - start

    return run


def trained(name: str, activation: str, digits, epochs: int) -> nn.Module:
    torch.manual_seed(0)
    model = TutorialNet() if name == "tutorial" else models.build_model(name, digits.input_shape, 10, activation)
    trainer.train_classifier(model, digits, epochs=epochs, seed=0)
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=64, help="test images for the accuracy columns")
    parser.add_argument("--tutorial-samples", type=int, default=8, help="test images through the TenSEAL network")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--degree", type=int, default=7, help="polynomial degree for ReLU/GELU")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--networks", nargs="+", default=["mlp/relu", "mlp/gelu", "cnn/relu", "cnn/gelu"])
    args = parser.parse_args()
    from machine import finish, start  # benchmarks/machine.py: threads; wall, CPU seconds and load

    meter = start()
    warnings.simplefilter("ignore")
    torch.set_num_threads(2)
    digits = data.digits()
    rows = []
    for spec in args.networks:
        name, activation = spec.split("/")
        model = trained(name, activation, digits, args.epochs)
        pann, _ = convert(model, digits, degree=args.degree)
        original = predict(model, digits.x_test[: args.samples]).argmax(1)
        rows.append({**measure_plan(spec, pann, digits, args), "degree": args.degree,
                     "original_accuracy": float((original == digits.y_test[: args.samples].numpy()).mean() * 100)})
        print(json.dumps(rows[-1]), flush=True)
    tutorial = trained("tutorial", "square", digits, args.epochs)
    pann, _ = convert(tutorial, digits, degree=2)
    rows.append(measure_plan("tutorial/polyact", pann, digits, args, params=TUTORIAL_PARAMS))
    rows.append(tenseal_tutorial(tutorial, digits, args, polyact_timer(pann, digits, TUTORIAL_PARAMS)))
    rows[-1]["polyact_speedup_latency"] = 1 / rows[-1]["ratio_polyact_over_tenseal_server"]["median"]
    rows[-1]["polyact_speedup_per_sample_batch"] = rows[-1]["latency_server_s"] / rows[-2]["batch_seconds_per_sample"]

    columns = ["network", "N", "depth", "precision_bits", "agreement", "encrypted_accuracy", "latency_total_s",
               "latency_server_s", "batch_seconds_per_sample", "request_kb", "response_kb"]
    print(" | ".join(columns))
    for r in rows:
        print(" | ".join(f"{r.get(c):.3g}" if isinstance(r.get(c), float) else str(r.get(c, "-")) for c in columns))
    t = rows[-1]
    q = t["ratio_polyact_over_tenseal_server"]
    print(f"polyact vs hand-written TenSEAL, same network and parameters, interleaved per image: server time ratio "
          f"polyact / TenSEAL median {q['median']:.2f} (range {q['min']:.2f}-{q['max']:.2f}), i.e. "
          f"{t['polyact_speedup_latency']:.1f}x faster per request (sample packing); "
          f"{t['polyact_speedup_per_sample_batch']:.0f}x per sample with batch packing (not interleaved)")
    print(finish(meter, rows))


if __name__ == "__main__":
    main()

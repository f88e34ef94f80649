"""The encrypted half of the polyact command: compile, encrypt-run (with a process pool),
bench and the demo."""
import json

import numpy as np
import pytest
import torch

import he_backend
from polyact.cli.commands import main
from polyact.cli.demo import DemoConfig, run_demo
from polyact.convert.pipeline import convert
from polyact.convert.storage import save_pann

pytestmark = pytest.mark.isolated  # CKKS memory: this module runs in its own interpreter (tests/isolation.py)


@pytest.fixture(scope="module")
def pann_file(digits, digits_mlp, tmp_path_factory):
    pann, _ = convert(digits_mlp, digits, degree=5)
    path = tmp_path_factory.mktemp("cli") / "mlp.pann"
    save_pann(pann, path, input_shape=digits.input_shape,
              input_range=(float(digits.x_train.min()), float(digits.x_train.max())))
    return path, pann.double().eval()


def test_compile_reports_the_plan_and_writes_bundles(pann_file, digits, tmp_path, capsys):
    path, pann = pann_file
    out = tmp_path / "deploy"
    assert main(["compile", str(path), "--packing", "batch", "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    expected = he_backend.compile(pann, digits.input_shape, "batch").report()
    assert report == json.loads(json.dumps(expected))
    server = he_backend.load_server_bundle(out)
    client = he_backend.load_client_bundle(out / "client.bundle")
    assert server.plan.depth == report["depth"] and client.layout == server.plan.layout()
    low, high = float(digits.x_train.min()), float(digits.x_train.max())
    assert server.input_range == client.input_range == (low, high)
    assert (out / "client.bundle").stat().st_size < 2000 < (out / "server.bundle").stat().st_size  # no weights
    with pytest.raises(he_backend.PayloadError, match="expected a polyact server bundle"):
        he_backend.load_server_bundle(out / "client.bundle")
    assert main(["compile", str(path)]) == 0
    assert "CKKS N=" in capsys.readouterr().out


def test_encrypt_run_reads_a_bundle(pann_file, tmp_path, capsys):
    path, _ = pann_file
    assert main(["compile", str(path), "--min-scale-bits", "25", "--out", str(tmp_path / "deploy")]) == 0
    capsys.readouterr()
    assert main(["encrypt-run", str(tmp_path / "deploy"), "--samples", "4", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["samples"] == 4 and figures["agreement"] == 100.0 and figures["precision_bits"] > 8


class Opaque:  # a pickled class: torch.load(weights_only=True) refuses it
    pass


def test_serve_refuses_non_polyact_files_without_unsafe_advice(tmp_path, capsys):
    torch.save({"x": Opaque()}, tmp_path / "x.plan")
    assert main(["encrypt-run", str(tmp_path / "x.plan")]) == 2
    err = capsys.readouterr().err
    assert "not a polyact file" in err and "weights_only=False" not in err and "weights_only` set to `False" not in err


TABNET = """
import torch
from torch import nn


class TabNet(nn.Module):
    def __init__(self, features=64, hidden=24, classes=10):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, classes))

    def forward(self, x):
        return self.net(x)
"""


@pytest.mark.slow
def test_bring_your_own_model_end_to_end_through_the_command_line(digits, tmp_path):
    """The README's path, as a user types it: state dict + --factory -> convert -> compile -> encrypt-run,
    with the factory's package in the current directory and polyact started without it on sys.path."""
    import subprocess
    import sys

    package = tmp_path / "mynets"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "tabular.py").write_text(TABNET)
    namespace = {}
    exec(TABNET, namespace)
    torch.manual_seed(0)
    net = namespace["TabNet"]()
    from polyact.train.loop import train_classifier

    train_classifier(net, digits, epochs=5, seed=0)
    torch.save(net.state_dict(), tmp_path / "net.pt")

    def polyact(*argv):
        # -P: the current directory is not put on sys.path (as with the installed `polyact` script)
        result = subprocess.run([sys.executable, "-P", "-m", "polyact", *argv], cwd=tmp_path, capture_output=True,
                                text=True, timeout=600)
        return result.returncode, result.stdout, result.stderr

    code, _, err = polyact("convert", "--model", "net.pt", "--factory", "mynets.tabular:TabNet", "--degree", "5",
                           "--out", "net.pann")
    assert code == 0, err
    from polyact.convert.storage import UntrustedFactory, load_pann

    with pytest.raises(UntrustedFactory, match="mynets.tabular:TabNet"):
        load_pann(tmp_path / "net.pann")  # the factory is persisted, and not imported unasked
    code, _, err = polyact("compile", "net.pann", "--out", "deploy", "--min-scale-bits", "25")
    assert code == 2 and "--factory mynets.tabular:TabNet" in err
    code, _, err = polyact("compile", "net.pann", "--factory", "mynets.tabular:TabNet", "--out", "deploy",
                           "--min-scale-bits", "25")
    assert code == 0, err
    code, out, err = polyact("encrypt-run", "deploy", "--samples", "8", "--json")  # no factory needed any more
    assert code == 0, err
    figures = json.loads(out)
    assert figures["agreement"] == 100.0 and figures["precision_bits"] > 6  # a 25-bit scale keeps ~8 bits
    code, _, err = polyact("compile", "net.pann", "--factory", f"{package / 'tabular.py'}:TabNet")
    assert code == 0, err


@pytest.mark.parametrize("workers", [1, pytest.param(2, marks=pytest.mark.slow)])  # 2: a process pool
def test_encrypt_run_agrees_with_plaintext(pann_file, digits, workers, capsys):
    path, pann = pann_file
    argv = ["encrypt-run", str(path), "--samples", "200", "--packing", "batch", "--workers", str(workers),
            "--min-scale-bits", "25", "--json"]
    assert main(argv) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["samples"] == 200 and figures["workers"] == workers
    assert figures["agreement"] == 100.0 and figures["precision_bits"] > 8
    assert figures["accuracy"] == figures["plaintext_accuracy"]


@pytest.mark.slow
def test_process_pool_outputs_equal_plaintext_order(pann_file, digits):
    from he_backend.protocol.parallel import run_encrypted

    _, pann = pann_file
    plan = he_backend.compile(pann, digits.input_shape, "sample", min_scale_bits=25)
    x = digits.x_test[:5].double()
    result = run_encrypted(plan, x.numpy(), workers=2)
    with torch.no_grad():
        ref = pann(x).numpy()
    assert result.outputs.shape == ref.shape
    assert np.abs(result.outputs - ref).max() < 1e-2 * np.abs(ref).max()


@pytest.mark.slow
@pytest.mark.isolated(alone=True)
def test_ray_tasks_on_a_local_instance(pann_file, digits, capsys):
    ray = pytest.importorskip("ray")
    path, _ = pann_file
    try:
        assert main(["encrypt-run", str(path), "--samples", "300", "--packing", "batch", "--workers", "3",
                     "--ray-address", "local", "--min-scale-bits", "25", "--json"]) == 0
    finally:
        ray.shutdown()
    figures = json.loads(capsys.readouterr().out)
    assert figures["samples"] == 300 and figures["agreement"] == 100.0


def test_bench_prints_levels_per_degree(capsys):
    assert main(["bench", "--degrees", "3", "7", "--scale-bits", "30", "--repeat", "1", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["degree"], r["depth"]) for r in rows] == [(3, 2), (7, 3)]


@pytest.mark.parametrize("argv, message", [
    (["compile", "missing.pann"], "missing.pann"),
    (["encrypt-run", "missing.pann", "--workers", "0"], "missing.pann"),
])
def test_errors_exit_2_with_a_message(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.isolated(alone=True)
def test_demo_writes_a_consistent_report(tmp_path):
    config = DemoConfig(epochs=8, degrees=(3, 7), robust_epochs=4, samples=16, latency_degrees=(3, 7), progress=False)
    result = run_demo(tmp_path, config)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["chosen"]["accuracy"] >= report["baseline_accuracy"] - config.max_loss
    assert report["plan"]["depth"] == report["chosen"]["depth"]
    assert report["encrypted"]["agreement"] == 100.0
    for name in ("activation_fit.png", "accuracy_vs_depth.png", "latency_vs_degree.png", "report.md"):
        assert (tmp_path / name).stat().st_size > 1000
    assert "cheapest PANN" in result.summary()

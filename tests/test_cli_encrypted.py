"""The encrypted half of the polyact command: compile, encrypt-run (with a process pool),
bench and the demo."""
import json

import numpy as np
import pytest
import torch

import he_backend
from polyact.cli import main
from polyact.convert import convert
from polyact.demo import DemoConfig, run_demo
from polyact.storage import save_pann


@pytest.fixture(scope="module")
def pann_file(digits, digits_mlp, tmp_path_factory):
    pann, _ = convert(digits_mlp, digits, degree=5)
    path = tmp_path_factory.mktemp("cli") / "mlp.pann"
    save_pann(pann, path, input_shape=digits.input_shape)
    return path, pann.double().eval()


def test_compile_reports_the_plan_and_writes_it(pann_file, digits, tmp_path, capsys):
    path, pann = pann_file
    out = tmp_path / "mlp.plan"
    assert main(["compile", str(path), "--packing", "batch", "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    expected = he_backend.compile(pann, digits.input_shape, "batch").report()
    assert report == json.loads(json.dumps(expected))
    assert he_backend.Plan.from_bytes(out.read_bytes()).depth == report["depth"]
    assert main(["compile", str(path)]) == 0
    assert "CKKS N=" in capsys.readouterr().out


@pytest.mark.parametrize("workers", [1, 2])
def test_encrypt_run_agrees_with_plaintext(pann_file, digits, workers, capsys):
    path, pann = pann_file
    argv = ["encrypt-run", str(path), "--samples", "200", "--packing", "batch", "--workers", str(workers),
            "--min-scale-bits", "25", "--json"]
    assert main(argv) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["samples"] == 200 and figures["workers"] == workers
    assert figures["agreement"] == 100.0 and figures["precision_bits"] > 8
    assert figures["accuracy"] == figures["plaintext_accuracy"]


def test_process_pool_outputs_equal_plaintext_order(pann_file, digits):
    from he_backend.parallel import run_encrypted

    _, pann = pann_file
    plan = he_backend.compile(pann, digits.input_shape, "sample", min_scale_bits=25)
    x = digits.x_test[:5].double()
    result = run_encrypted(plan, x.numpy(), workers=2)
    with torch.no_grad():
        ref = pann(x).numpy()
    assert result.outputs.shape == ref.shape
    assert np.abs(result.outputs - ref).max() < 1e-2 * np.abs(ref).max()


@pytest.mark.slow
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

"""The polyact command: output, JSON, plots, exit codes."""
import json
import subprocess
import sys

import numpy as np
import pytest

import polyact
from polyact.cli.commands import main


def test_fit_json_is_the_fitted_polynomial(capsys):
    assert main(["fit", "relu", "--interval", "-5", "5", "--degree", "15", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    expected = polyact.fit("relu", (-5, 5), 15)
    assert {"max_error", "degree", "depth", "interval", "method", "coefficients"} <= set(data)
    assert data["degree"] == 15 and data["depth"] == 4 and data["interval"] == [-5.0, 5.0]
    np.testing.assert_allclose(data["coefficients"], expected.coef, rtol=1e-12, atol=1e-15)
    assert data["max_error"] == pytest.approx(expected.max_error)


def test_fit_text_output_and_plot(tmp_path, capsys):
    png = tmp_path / "fit.png"
    assert main(["fit", "gelu", "--interval", "-6", "6", "--degree", "7", "--method", "chebyshev", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "chebyshev, degree 7, depth 3" in out and "max error" in out and "monomial" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fit_by_tolerance_and_composite(capsys):
    assert main(["fit", "silu", "--interval", "-6", "6", "--tolerance", "1e-3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["max_error"] <= 1e-3
    assert main(["fit", "relu", "--interval", "-1", "1", "--method", "composite", "--alpha", "6"]) == 0
    assert "sign precision" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["fit", "relu", "--interval", "5", "-5", "--degree", "3"], "a < b"),
    (["fit", "relu", "--interval", "-5", "5"], "--degree"),
    (["fit", "swishy", "--interval", "-5", "5", "--degree", "3"], "unknown activation"),
])
def test_bad_arguments_exit_2_with_a_message(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow  # a fresh interpreter importing torch: seconds
def test_module_entry_point_runs():
    result = subprocess.run(
        [sys.executable, "-m", "polyact", "fit", "tanh", "--interval", "-3", "3", "--degree", "5", "--json"],
        capture_output=True, text=True, check=True,
    )
    assert json.loads(result.stdout)["degree"] == 5


def test_convert_writes_a_loadable_pann_and_reports_json(tmp_path, capsys):
    out = tmp_path / "mlp.pann"
    code = main(["convert", "--model", "mlp", "--epochs", "2", "--degree", "7", "--out", str(out), "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["depth"] == 1 + 3 + 1 and len(report["layers"]) == 1
    from polyact.convert.storage import load_pann

    pann = load_pann(out)
    assert pann.polyact_input_shape == [1, 8, 8]


def test_convert_accepts_saved_models_and_state_dicts_with_a_factory(tmp_path, capsys):
    import torch

    from polyact.convert.storage import save_model
    from polyact.models import build_model

    model = build_model("mlp", (1, 8, 8), 10, "gelu", hidden=(8,))
    save_model(model, tmp_path / "model.pt")
    assert main(["convert", "--model", str(tmp_path / "model.pt"), "--tolerance", "0.05"]) == 0
    assert "nn.GELU" in capsys.readouterr().out
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    kwargs = json.dumps({"name": "mlp", "input_shape": [1, 8, 8], "num_classes": 10, "activation": "gelu", "hidden": [8]})
    assert main(["convert", "--model", str(tmp_path / "weights.pt"), "--factory", "polyact.models:build_model",
                 "--factory-kwargs", kwargs, "--degree", "5"]) == 0
    assert main(["convert", "--model", str(tmp_path / "weights.pt"), "--degree", "5"]) == 2
    assert "give --factory" in capsys.readouterr().err
    torch.jit.script(model).save(str(tmp_path / "model.ts"))
    assert main(["convert", "--model", str(tmp_path / "model.ts"), "--degree", "5"]) == 2
    assert "is TorchScript" in capsys.readouterr().err


def test_tradeoff_writes_csv_plot_and_json(tmp_path, capsys):
    csv_path, png = tmp_path / "t.csv", tmp_path / "t.png"
    code = main(["tradeoff", "--model", "mlp", "--epochs", "2", "--methods", "minimax", "lsq", "--degrees", "3", "7",
                 "--csv", str(csv_path), "--plot", str(png), "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["rows"]) == 4 and {r["method"] for r in result["rows"]} == {"minimax", "lsq"}
    assert len(csv_path.read_text().splitlines()) == 5
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_train_plain_then_robust_then_fine_tune_a_pann(tmp_path, capsys):
    model, pann, tuned = tmp_path / "m.pt", tmp_path / "m.pann", tmp_path / "t.pann"
    assert main(["train", "--model", "mlp", "--epochs", "3", "--out", str(model), "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert plain["test_accuracy"] > 50 and model.exists()
    assert main(["train", "--model", str(model), "--degree", "3", "--robust-epochs", "2", "--out", str(pann), "--json"]) == 0
    robust = json.loads(capsys.readouterr().out)
    assert robust["report"]["layers"][0]["degree"] == 3 and len(robust["stages"]) == 1
    assert main(["train", "--model", str(pann), "--trainable-coefficients", "--robust-epochs", "1", "--out", str(tuned)]) == 0
    assert "fine-tune PANN" in capsys.readouterr().out
    from polyact.convert.storage import load_pann

    assert load_pann(tuned).polyact_input_shape == [1, 8, 8]

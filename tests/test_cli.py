"""The polyact command: output, JSON, plots, exit codes."""
import json
import subprocess
import sys

import numpy as np
import pytest

import polyact
from polyact.cli import main


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


def test_module_entry_point_runs():
    result = subprocess.run(
        [sys.executable, "-m", "polyact", "fit", "tanh", "--interval", "-3", "3", "--degree", "5", "--json"],
        capture_output=True, text=True, check=True,
    )
    assert json.loads(result.stdout)["degree"] == 5

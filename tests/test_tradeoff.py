"""Trade-off sweeps: each row is what converting with that setting achieves."""
import json

import pytest

from polyact.convert.pipeline import convert
from polyact.tradeoff import sweep
from polyact.train.loop import evaluate, predict


@pytest.fixture(scope="module")
def result(digits, digits_mlp):
    return sweep(digits_mlp, digits, methods=("minimax", "chebyshev"), degrees=(3, 7), margins=(0.1, 0.3),
                 alphas=(5,), name="mlp", progress=False)


def test_rows_cover_the_grid_and_match_independent_conversions(result, digits, digits_mlp):
    assert len(result.rows) == 2 * 2 * 2 + 1 * 2  # methods x degrees x margins + alphas x margins
    assert result.baseline_accuracy == pytest.approx(evaluate(digits_mlp, digits.x_test, digits.y_test))
    row = next(r for r in result.rows if r.method == "chebyshev" and r.degree == 7 and r.margin == 0.3)
    pann, report = convert(digits_mlp, digits.calibration(), method="chebyshev", degree=7, margin=0.3)
    assert row.accuracy == pytest.approx(evaluate(pann, digits.x_test, digits.y_test))
    assert row.depth == report.depth == 1 + 3 + 1
    logits = predict(pann, digits.x_test)
    reference = predict(digits_mlp, digits.x_test)
    assert row.max_logit_error == pytest.approx((logits - reference).abs().max().item())
    agreement = 100 * (logits.argmax(1) == reference.argmax(1)).float().mean().item()
    assert row.agreement == pytest.approx(agreement)
    composite = next(r for r in result.rows if r.method == "composite")
    assert composite.alpha == 5 and composite.degree is None


def test_cheapest_is_the_lowest_depth_within_the_loss(result):
    best = result.cheapest(1.0)
    eligible = [r for r in result.rows if r.accuracy >= result.baseline_accuracy - 1.0]
    assert best is not None and best.depth == min(r.depth for r in eligible)
    assert result.cheapest(-100.0) is None


def test_exports(result, tmp_path):
    rows = result.to_csv().strip().splitlines()
    assert rows[0].startswith("method,degree,alpha,margin,depth,accuracy")
    assert len(rows) == len(result.rows) + 1
    data = json.loads(result.to_json())
    assert data["baseline_accuracy"] == result.baseline_accuracy and len(data["rows"]) == len(result.rows)
    from polyact.plots import plot_tradeoff

    png = plot_tradeoff(result, tmp_path / "t.png")
    assert png.read_bytes()[:4] == b"\x89PNG"

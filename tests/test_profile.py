"""The plan profiler: the SEAL calls it counts per step equal the plan's predicted operation
counts, its times add up to the run's, and it leaves the engine as it found it."""
import time

import pytest

import he_backend
from he_backend.protocol.profile import instrumented, profile
from polyact.convert.pipeline import convert


@pytest.fixture(scope="module")
def small_plan(digits, digits_mlp):
    pann, _ = convert(digits_mlp, digits, degree=7)
    return he_backend.compile(pann.double().eval(), digits.input_shape)


@pytest.fixture(scope="module")
def mlp_profile(small_plan, digits):
    return profile(small_plan, digits.x_test[0].numpy())


@pytest.mark.slow
@pytest.mark.isolated  # CKKS memory: in another interpreter (tests/isolation.py)
def test_profile_counts_equal_the_plans_prediction(small_plan, mlp_profile):
    predicted = {r["step"]: r for r in small_plan.counts()}
    assert [r["step"] for r in mlp_profile.steps] == list(predicted)
    for row in mlp_profile.steps:
        expect = predicted[row["step"]]
        calls = row["calls"]
        assert calls.get("pt_mul", 0) == expect["pt_mults"], row["step"]
        assert calls.get("rotate", 0) == expect["rotations"], row["step"]
        assert calls.get("ct_ct_mul", 0) == expect["ct_ct_mults"], row["step"]
        # every ciphertext product is relinearised, every affine map ends in one rescale
        assert calls.get("relin", 0) == expect["ct_ct_mults"], row["step"]
        if row["kind"] == "affine":
            assert calls.get("rescale", 0) == 1, row["step"]


@pytest.mark.slow
@pytest.mark.isolated  # CKKS memory: in another interpreter (tests/isolation.py)
def test_profile_times_add_up(mlp_profile):
    step_sum = sum(r["seconds"] for r in mlp_profile.steps)
    assert step_sum == pytest.approx(mlp_profile.total_seconds, rel=0.05)
    for row in mlp_profile.steps:
        assert 0 < sum(row["primitive_seconds"].values()) <= row["seconds"]
    totals = mlp_profile.totals()
    assert totals["rotate"]["calls"] == sum(r["calls"].get("rotate", 0) for r in mlp_profile.steps)
    assert "total" in mlp_profile.table()


@pytest.mark.slow
@pytest.mark.isolated  # CKKS memory: in another interpreter (tests/isolation.py)
def test_warm_cache_skips_the_weight_encodes(small_plan, digits, mlp_profile):
    cold = profile(small_plan, digits.x_test[0].numpy(), warmup=0)
    weights = sum(r["pt_mults"] for r in small_plan.counts() if r["kind"] == "affine")
    assert cold.totals()["encode"]["calls"] - mlp_profile.totals()["encode"]["calls"] == weights


def test_instrumented_times_each_call_and_restores_the_engine():
    class Slow:
        def rotate_vector(self, seconds):
            time.sleep(seconds)
            return "rotated"

        def other(self):
            return "untimed"

    class FakeEngine:
        evaluator, encoder = Slow(), Slow()

    engine = FakeEngine()
    original = engine.evaluator
    with pytest.raises(RuntimeError):
        with instrumented(engine) as (calls, seconds):
            assert engine.evaluator.rotate_vector(0.02) == "rotated"
            assert engine.evaluator.other() == "untimed"
            raise RuntimeError("a failing step")
    assert calls == {"rotate": 1}
    assert 0.02 <= seconds["rotate"] < 0.5
    assert engine.evaluator is original


def test_profile_refuses_negative_warmup(small_plan, digits):
    with pytest.raises(ValueError, match="warmup"):
        profile(small_plan, digits.x_test[0].numpy(), warmup=-1)


@pytest.mark.slow
@pytest.mark.isolated  # CKKS memory: in another interpreter (tests/isolation.py)
def test_cli_bench_profile_prints_the_plans_counts(tmp_path, digits, digits_mlp, small_plan, capsys):
    import json

    from polyact.cli.commands import main
    from polyact.convert.storage import save_pann

    pann, _ = convert(digits_mlp, digits, degree=7)
    path = tmp_path / "mlp.pann"
    save_pann(pann, path, input_shape=digits.input_shape)
    assert main(["bench", "--profile", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    totals = small_plan.report()["totals"]
    assert out["primitives"]["rotate"]["calls"] == totals["rotations"]
    assert out["primitives"]["pt_mul"]["calls"] == totals["pt_mults"]
    assert [s["step"] for s in out["steps"]] == [r["step"] for r in small_plan.counts()]

"""The replicated input layout the client packs for the first map (he_backend.lowering.layout.row_aligned_input)."""
import numpy as np
import pytest
import scipy.sparse as sp

import he_backend
from he_backend.lowering.layout import count_diagonals, row_aligned_input
from he_backend.protocol.plan_layout import PlanLayout
from he_backend.protocol.serialization import PayloadError, pack, unpack
from polyact.ir.linear_maps import conv_matrix


def gathered(gather, x):
    return np.where(gather >= 0, x[np.maximum(gather, 0)], 0.0)


@pytest.mark.parametrize("kind", ["conv", "dense", "ragged"])
def test_the_replicated_layout_computes_the_same_map_with_one_diagonal_per_row_entry(kind):
    rng = np.random.default_rng(3)
    if kind == "conv":  # 1 -> 8 channels, 3x3, 8x8: 9 non-zeros per row at most
        weight, _ = conv_matrix(rng.normal(size=(8, 1, 3, 3)), (1, 8, 8), (1, 1), (1, 1), (1, 1), 1)
    elif kind == "dense":
        weight = sp.csr_matrix(rng.normal(size=(64, 64)))
    else:
        weight = sp.random(40, 30, density=0.2, random_state=4, format="csr")
    pos_out = np.arange(weight.shape[0])
    gather, mapped = row_aligned_input(weight, pos_out)
    x = rng.normal(size=weight.shape[1])
    np.testing.assert_allclose(mapped @ gathered(gather, x), weight @ x, atol=1e-12)
    most = int(np.diff(weight.indptr).max())
    assert count_diagonals(mapped, np.arange(gather.size), pos_out) == most
    assert count_diagonals(weight, np.arange(weight.shape[1]), pos_out) > most


def test_sample_plans_pack_the_input_replicated_and_batch_plans_flat(digits, digits_cnn):
    from polyact.convert.pipeline import convert

    pann, _ = convert(digits_cnn, digits, degree=3)
    pann = pann.double().eval()
    sample = he_backend.compile(pann, digits.input_shape)
    batch = he_backend.compile(pann, digits.input_shape, "batch")
    assert sample.input_gather is not None and batch.input_gather is None
    first = {p: next(r for r in plan.counts() if r["kind"] == "affine") for p, plan in (("s", sample), ("b", batch))}
    # 3x3 kernel, one input channel: the 9 taps of each output lie 1 period M apart, so one
    # product and a fold of log2(slots / M) rotations (the batch plan: a diagonal per offset)
    step = next(s for s in sample.steps if isinstance(s, he_backend.eval.steps.AffineStep))
    assert first["s"]["pt_mults"] == 1 and 9 < first["b"]["pt_mults"]
    assert len(step.folds) == int(np.log2(sample.params.slots // step.period)) and step.period <= 1024
    x = digits.x_test[:3].double().numpy()
    np.testing.assert_allclose(sample.simulate(x), batch.simulate(x), atol=1e-9)
    layout = PlanLayout.from_bytes(sample.layout().to_bytes())
    assert layout == sample.layout() and layout.input_ciphertexts == 1
    restored = he_backend.Plan.from_bytes(sample.to_bytes())
    np.testing.assert_array_equal(restored.input_gather, sample.input_gather)


def test_a_layout_whose_gather_reads_outside_the_input_is_refused(digits, digits_cnn):
    from polyact.convert.pipeline import convert

    pann, _ = convert(digits_cnn, digits, degree=3)
    layout = he_backend.compile(pann.double().eval(), digits.input_shape).layout()
    header, sections = unpack(layout.to_bytes(), "plan layout")
    bad = np.frombuffer(sections[0], dtype="<i8").copy()
    bad[0] = layout.input_length  # one past the last input element
    with pytest.raises(PayloadError, match="input layout"):
        PlanLayout.from_bytes(pack("plan layout", header, [bad.tobytes()]))

"""Galois key choice and rotation schedules (he_backend.eval.rotations), against plain
breadth-first searches and direct counts written here."""
from collections import deque

import numpy as np
import pytest

from he_backend.eval.diagonals import tile_offsets
from he_backend.eval.rotations import KeySet, MapShape, split_offsets
from he_backend.lowering.key_choice import choose_keys
from polyact.ir.linear_maps import conv_matrix


def shortest_rotations(keys, slots):
    """Key switches to reach every amount mod ``slots`` (a plain queue-based search)."""
    dist = {0: 0}
    queue = deque([0])
    while queue:
        d = queue.popleft()
        for k in keys:
            e = (d + k) % slots
            if e not in dist:
                dist[e] = dist[d] + 1
                queue.append(e)
    return dist


@pytest.mark.parametrize("keys", [(1,), (1, -1), (1, -4, 8, 13), (-3, 5)])
def test_key_set_costs_are_shortest_paths_and_paths_compose(keys):
    slots = 64
    reference = shortest_rotations(keys, slots)
    key_set = KeySet(keys, slots)
    for amount in range(-slots, slots):
        assert key_set.cost(amount) == reference[amount % slots]
        path = key_set.path(amount)
        assert len(path) == reference[amount % slots] and set(path) <= set(keys)
        assert sum(path) % slots == amount % slots


def test_a_rotation_the_keys_cannot_make_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="plan.rotations"):
        KeySet((2, -2), 16).path(3)


def test_offsets_split_into_giant_steps_and_centred_residues():
    offsets = np.random.default_rng(0).integers(-5000, 5000, 400)
    for baby in (1, 2, 7, 32, 1024):
        g, r = split_offsets(offsets, baby)
        assert np.array_equal(g * baby + r, offsets)
        assert np.all((-(baby // 2) <= r) & (r < baby - baby // 2))


def conv_shape(channels, side, block):
    kernel = np.random.default_rng(1).normal(size=(channels, channels, 3, 3))
    weight, _ = conv_matrix(kernel, (channels, side, side), (1, 1), (1, 1), (1, 1), 1)
    positions = np.arange(channels * side * side)
    return MapShape.of([tile_offsets(weight, positions, positions, block)])


def count_schedule(offsets, baby, keys, runs=2):
    """Key switches of the schedule, counted rotation by rotation as the runner makes them:
    residues outwards from 0 on each side, giant steps cut into ``runs`` runs of nearly equal
    length, each a Horner chain."""
    g = np.floor_divide(offsets + baby // 2, baby)
    count = 0
    residues = np.unique(offsets - g * baby)
    for side in (sorted(residues[residues < 0], reverse=True), sorted(residues[residues > 0])):
        previous = 0
        for r in side:
            count += int(min(keys.cost(r), keys.cost(r - previous)) if previous else keys.cost(r))
            previous = r
    for part in np.array_split(np.unique(g), runs):
        descending = part[::-1].tolist()
        count += sum(int(keys.cost((a - b) * baby)) for a, b in zip(descending, descending[1:]))
        count += int(keys.cost(descending[-1] * baby))
    return count


def test_convolution_schedule_uses_plane_and_row_keys():
    """A 3x3 convolution over 16 channels of 32 x 32 in one 16384-slot ciphertext: with keys
    +-1, +-32, +-1024 and giant step 1024 (residues ``32 dy + dx``), 10 baby key switches and
    31 giant ones; stepping by 1 up to every residue would cost more than 300."""
    shape = conv_shape(16, 32, 16384)
    keys = KeySet((-1024, -32, -1, 1, 32, 1024), 16384)
    offsets = shape.inputs[0]
    assert shape.cost(1024, keys) == count_schedule(offsets, 1024, keys) == 10 + 31
    assert min(shape.cost(b, KeySet((1, -1), 16384)) for b in (64, 128, 256)) > 300


def test_chosen_keys_make_convolutions_cheap_within_the_key_limit():
    """Six keys for two convolutions (16 x 32 x 32 and 4 x 8 x 8): a few dozen key switches,
    against more than 300 for the first alone with keys +-1."""
    shapes = [conv_shape(16, 32, 16384), conv_shape(4, 8, 16384)]
    keys = choose_keys(shapes, 16384, sizes=(32, 1024, 8, 64), max_keys=6)
    assert len(keys.steps) <= 6
    cost = sum(min(s.cost(b, keys) for b in [1] + [abs(k) for k in keys.steps]) for s in shapes)
    assert cost <= 80
    assert choose_keys([], 16384).steps == ()


def test_keys_of_positive_steps_rotate_as_composed():
    """Only positive steps (once read by the binding as Galois elements, not steps): 8 is a
    key, 9 = 8 + 1 is composed of two; decrypted slots move as numpy's roll says."""
    from he_backend.eval.params import CkksParams
    from he_backend.protocol.keys import KeyHolder

    holder = KeyHolder(CkksParams(8192, (60, 40, 60), 40), [1, 8])
    engine = holder.engine
    values = np.random.default_rng(2).uniform(-1, 1, engine.slots)
    ct = holder.encrypt(values)
    for amount, switches in ((8, 1), (9, 2), (17, 3)):
        before = engine.counts["rotate"]
        out = holder.decrypt(engine.rotate(ct, amount))
        np.testing.assert_allclose(out, np.roll(values, -amount), atol=1e-5)
        assert engine.counts["rotate"] - before == switches


def test_key_memory_bounds_the_keys_and_fewer_keys_cost_more_switches(digits, digits_cnn):
    import he_backend
    from polyact.convert.pipeline import convert

    pann, _ = convert(digits_cnn, digits, degree=3)
    pann = pann.double().eval()
    few = he_backend.compile(pann, digits.input_shape, key_memory=0)
    many = he_backend.compile(pann, digits.input_shape)
    assert len(few.rotations) == 2 < len(many.rotations)
    assert few.report()["totals"]["rotations"] > many.report()["totals"]["rotations"]
    with pytest.raises(ValueError, match="key_memory"):
        he_backend.compile(pann, digits.input_shape, key_memory=-1)


def test_two_keys_need_not_be_plus_minus_one():
    """A map whose diagonals sit at multiples of 256 (a replicated input: offsets ``256 q``) with
    room for two keys: +-1 cost one switch per slot of distance (3072 here); the chooser
    exchanges one of them for a larger step and lands within twice the cost of the best pair of
    candidate keys (searched exhaustively here)."""
    slots = 8192
    offsets = 256 * np.arange(9)
    shape = MapShape((offsets,), (offsets,))
    babies = lambda keys: [1] + [abs(k) for k in keys.steps]  # noqa: E731
    cost = lambda keys: min(shape.cost(b, keys) for b in babies(keys))  # noqa: E731
    assert cost(KeySet((-1, 1), slots)) > 1000
    chosen = choose_keys([shape], slots, sizes=(256,), max_keys=2)
    assert len(chosen.steps) == 2
    candidates = [s * m for m in [1 << j for j in range(13)] for s in (1, -1)]
    best = min(cost(KeySet((a, b), slots)) for a in candidates for b in candidates if a < b)
    assert cost(chosen) <= 2 * best < 100

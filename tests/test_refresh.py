"""Interactive refresh: segment placement against brute force, plans split by max_levels,
rounds against the plaintext PANN, what each party sees, and bad round bytes."""
import itertools
import json
import socket
import threading
import time
import urllib.request

import numpy as np
import pytest
import tenseal.sealapi as sa
import torch
from test_encrypted import (  # one definition of "bits" for the encrypted tests
    _reference,
    precision_bits,
)

import he_backend
from he_backend.eval import rns
from he_backend.eval.params import MAX_LOG_Q, max_depth, params_for
from he_backend.lowering.compiler import _square_shifts
from he_backend.lowering.segments import (
    CostModel,
    candidate_cut,
    live_sets,
    roots,
    shortest_cuts,
    step_levels,
    value_bounds,
)
from he_backend.protocol.keys import KeyHolder
from he_backend.protocol.refresh import (
    REPLY_KIND,
    REQUEST_KIND,
    MaskPolicy,
    mask,
    mask_bits,
    mask_level,
    refresh_precision_bits,
    unmask,
)
from he_backend.protocol.serialization import pack, seal_from_bytes, unpack
from polyact import models
from polyact.convert.pipeline import convert
from polyact.ir.graph import INPUT
from polyact.ir.lower import lower

pytestmark = pytest.mark.isolated  # CKKS memory: this module runs in its own interpreter (tests/isolation.py)

SIGMA = 30


def _pann(model, digits, **options):
    pann, _ = convert(model, digits, **options)
    return pann.double().eval()


@pytest.fixture(scope="module")
def mlp(digits, digits_mlp):
    return _pann(digits_mlp, digits, degree=7)


@pytest.fixture(scope="module")
def cnn(digits, digits_cnn):
    return _pann(digits_cnn, digits, degree=2)


@pytest.fixture(scope="module")
def mlp_plan(mlp, digits):
    return he_backend.compile(mlp, digits.input_shape, "batch", max_levels=4, mask=MaskPolicy(sigma=SIGMA))


@pytest.fixture(scope="module")
def mlp_pair(mlp_plan):
    client = mlp_plan.client()
    return client, he_backend.Server.from_bytes(mlp_plan.to_bytes(), client.public_context())


# ---- placement --------------------------------------------------------------------------------
def _brute_force(count, edge):
    """Every subset of cut positions, costed path by path."""
    best, best_cuts = np.inf, None
    for k in range(count):
        for cuts in itertools.combinations(range(1, count), k):
            path = (0, *cuts, count)
            costs = [edge(a, b) for a, b in zip(path[:-1], path[1:])]
            if all(c is not None for c in costs) and sum(costs) < best - 1e-12:
                best, best_cuts = sum(costs), list(cuts)
    return best_cuts, best


@pytest.mark.parametrize("seed", range(6))
def test_shortest_cuts_equal_brute_force_on_random_chains(seed):
    rng = np.random.default_rng(seed)
    count = 8
    table = rng.uniform(1, 10, (count + 1, count + 1))
    feasible = (rng.uniform(size=table.shape) < 0.6) | (np.arange(count + 1)[None, :] - np.arange(count + 1)[:, None] == 1)

    def edge(c, p):
        return float(table[c, p]) if feasible[c, p] else None

    cuts, cost = shortest_cuts(count, edge)
    expected_cuts, expected = _brute_force(count, edge)
    assert cost == pytest.approx(expected) and cuts == expected_cuts


def test_shortest_cuts_without_a_path_is_an_error():
    with pytest.raises(ValueError, match="no placement"):
        shortest_cuts(3, lambda c, p: None if p == 3 else 1.0)


@pytest.mark.parametrize("max_levels, sigma", [(3, SIGMA), (4, 44)])
def test_compiled_cuts_are_the_brute_force_optimum(cnn, digits, max_levels, sigma):
    """The CNN (a chain) at a few levels per segment: every subset of cut positions, its levels
    computed over the whole chain at once and costed with the same cost model; the compiler's
    segment-by-segment shortest path must pick the cheapest feasible subset."""
    plan = he_backend.compile(cnn, digits.input_shape, max_levels=max_levels, mask=MaskPolicy(sigma=sigma))
    steps, params, top = plan.steps, plan.params, plan.params.depth + 1
    ops = {r["step"]: r for r in plan.counts()}
    bounds = value_bounds(steps, _square_shifts(lower(cnn, digits.input_shape)), plan.mask.margin)
    live, root = live_sets(steps, plan.output), roots(steps)

    def total(positions):
        cuts = [candidate_cut(live[p], p, root, bounds, params, plan.mask) for p in positions]
        if any(c is None for c in cuts):
            return None
        level = step_levels(steps, top, {INPUT}, resets={c.position: c.names for c in cuts})
        if min(level[s.name] for s in steps) < top - max_levels:
            return None
        if any(level[steps[c.position - 1].name] < c.mask_level for c in cuts):
            return None
        return _chain_seconds(plan, cuts, level, ops)

    options = {cuts: total(cuts) for k in range(len(steps)) for cuts in itertools.combinations(range(1, len(steps)), k)}
    feasible = {c: v for c, v in options.items() if v is not None}
    assert len(options) > len(feasible) >= 1
    assert [c.position for c in plan.cuts] == list(min(feasible, key=feasible.get))


# ---- segmented plans ----------------------------------------------------------------------------
def test_digits_nets_keep_one_round(mlp, cnn, digits):
    for pann in (mlp, cnn):
        plan = he_backend.compile(pann, digits.input_shape)
        assert plan.cuts == [] and plan.report()["refresh"]["rounds"] == 0 and plan.layout().refreshes == 0


def test_segmented_plan_levels_twin_and_bytes(mlp_plan, mlp, digits):
    plan = mlp_plan
    top = plan.params.depth + 1
    assert plan.params.depth == 4 and len(plan.cuts) >= 1
    x = digits.x_test[:16].numpy()
    np.testing.assert_allclose(plan.simulate(x), _reference(mlp, x), rtol=1e-9, atol=1e-9)
    trace = plan.trace(x)
    for cut in plan.cuts:  # live values are at or above the level their masks need, and bounded
        produced = {s.name: s.level for s in plan.steps[: cut.position]}
        assert all(produced[name] >= cut.mask_level for name in cut.names)
        assert all(np.abs(trace[name]).max() <= bound for name, bound in zip(cut.names, cut.bounds))
    for start, stop in plan.segments:
        assert all(1 <= s.level < top for s in plan.steps[start:stop])
    report = plan.report()["refresh"]
    assert report["rounds"] == len(plan.cuts) and f"2^-{SIGMA} per coefficient" in report["leakage"]
    n = plan.params.poly_modulus_degree  # N integer coefficients per masked ciphertext (batch packing)
    assert report["masked_coefficients"] == n * sum(len(c.names) for c in plan.cuts)
    # per coefficient 2C / W with C = 2 scale B and W the next power of two above 2^(sigma+1) C
    total = sum(n * 2 * (2 * plan.params.scale * b) / 2.0 ** np.ceil(np.log2(2.0 ** (SIGMA + 1) * 2 * plan.params.scale * b))
                for c in plan.cuts for b in c.bounds)
    assert report["statistical_bits"] == pytest.approx(-np.log2(total))
    assert report["statistical_bits"] >= SIGMA - np.log2(report["masked_coefficients"])
    assert report["leakage_total"].startswith(f"2^-{-np.log2(total):.1f} ")
    again = he_backend.Plan.from_bytes(plan.to_bytes())
    assert again.cuts == plan.cuts and again.mask == plan.mask and again.report() == plan.report()
    assert he_backend.PlanLayout.from_bytes(plan.layout().to_bytes()).refreshes == len(plan.cuts)
    assert "refresh before" in plan.table()


@pytest.fixture(scope="module")
def deep(digits):
    """Six degree-15 layers: about 31 levels, more than N = 32768 holds at 128-bit security."""
    torch.manual_seed(0)
    model = models.build_model("mlp", digits.input_shape, digits.num_classes, "gelu", hidden=(16,) * 6)
    return _pann(model, digits, degree=15)


@pytest.fixture(scope="module")
def deep_plan(deep, digits):
    return he_backend.compile(deep, digits.input_shape, mask=MaskPolicy(sigma=SIGMA))


@pytest.mark.slow
def test_too_deep_for_any_secure_ring_is_split_automatically(deep, deep_plan, digits):
    with pytest.raises(he_backend.ParameterError, match="lower the polynomial degrees"):
        he_backend.choose_params(lower(deep, digits.input_shape).depth)
    plan = deep_plan
    assert plan.cuts and plan.params.log_q <= MAX_LOG_Q[plan.params.poly_modulus_degree]
    assert plan.depth <= plan.params.depth
    x = digits.x_test[:8].numpy()
    np.testing.assert_allclose(plan.simulate(x), _reference(deep, x), rtol=1e-9, atol=1e-9)


def _chain_seconds(plan, cuts, level, ops) -> float:
    """A chain's refresh rounds ``cuts`` (every live ciphertext) and every step's operations
    ``ops`` at the levels it runs at (its input's level and its own, ``level``, averaged up),
    summed step by step with the default cost model."""
    model, ring, top = CostModel(), plan.params.poly_modulus_degree, plan.params.depth + 1
    positions = {c.position for c in cuts}
    seconds = sum(model.refresh_seconds(ring, sum(plan.ciphertexts(v) for v in c.names), c.mask_level, top)
                  for c in cuts)
    entry = top
    for i, s in enumerate(plan.steps):
        entry = top if i in positions else entry
        r = ops[s.name]
        seconds += model.step_seconds(ring, int(np.ceil((entry + level[s.name]) / 2)), r["ct_ct_mults"], r["pt_mults"],
                                      r["rotations"])
        entry = level[s.name]
    return seconds


def _estimated_seconds(plan) -> float:
    """:func:`_chain_seconds` of a compiled plan: its cuts at its steps' levels."""
    return _chain_seconds(plan, plan.cuts, {s.name: s.level for s in plan.steps}, {r["step"]: r for r in plan.counts()})


@pytest.mark.slow
def test_the_segment_length_is_the_cheapest_of_all_lengths(deep, deep_plan, digits):
    """Without ``max_levels`` the compiler picks how many levels a segment has. Every length,
    compiled on its own on the same ring and costed step by step, costs at least as much as
    the chosen one. Shorter segments make each key switch cheaper (``~ L^2``) and cost rounds."""
    plan = deep_plan
    ring, scale = plan.params.poly_modulus_degree, plan.params.scale_bits
    costs = {}
    for levels in range(1, max_depth(ring, scale) + 1):
        try:
            fixed = he_backend.compile(deep, digits.input_shape, params=params_for(ring, levels, scale),
                                       max_levels=levels, mask=plan.mask)
        except he_backend.ParameterError:
            continue
        costs[levels] = _estimated_seconds(fixed), [c.position for c in fixed.cuts]
    cheapest = min(costs, key=lambda levels: costs[levels][0])
    assert plan.params == params_for(ring, cheapest, scale)
    assert [c.position for c in plan.cuts] == costs[cheapest][1]
    assert _estimated_seconds(plan) == pytest.approx(costs[cheapest][0])
    assert min(costs) < cheapest < max(costs)  # neither end: the search matters
    assert costs[max(costs)][0] > 1.5 * costs[cheapest][0]


def test_keys_fill_the_memory_of_the_chosen_segment_length(deep, digits):
    """Galois keys shrink with the modulus: with 500 MB of key memory the longest chain (20
    primes, ~220 MB a key) holds 2 keys; the chosen shorter chain gets the keys a plan compiled
    directly for its parameters gets."""
    memory = 500 << 20
    plan = he_backend.compile(deep, digits.input_shape, mask=MaskPolicy(sigma=SIGMA), key_memory=memory)
    direct = he_backend.compile(deep, digits.input_shape, params=plan.params, max_levels=plan.params.depth,
                                mask=MaskPolicy(sigma=SIGMA), key_memory=memory)
    assert plan.params.depth < max_depth(plan.params.poly_modulus_degree, plan.params.scale_bits)
    assert len(plan.rotations) > 2 and plan.rotations == direct.rotations
    assert plan.report()["totals"] == direct.report()["totals"]


@pytest.mark.slow
def test_the_chosen_segments_run_encrypted(deep, deep_plan, digits):
    client = deep_plan.client()
    server = he_backend.Server.from_bytes(deep_plan.to_bytes(), client.public_context())
    x = digits.x_test[:2].numpy()
    rounds = he_backend.Rounds()
    out = client.decrypt(he_backend.run_interactive(client, server, client.encrypt(x), rounds))
    ref = _reference(deep, x)
    assert rounds.count == len(deep_plan.cuts) >= 2
    assert (out.argmax(1) == ref.argmax(1)).all()
    assert precision_bits(out, ref) > 12


def test_impossible_segments_and_bad_options_are_clear_errors(mlp, digits):
    with pytest.raises(he_backend.ParameterError, match="raise max_levels"):
        he_backend.compile(mlp, digits.input_shape, max_levels=2)
    with pytest.raises(ValueError, match="max_levels must be >= 1"):
        he_backend.compile(mlp, digits.input_shape, max_levels=0)
    with pytest.raises(ValueError, match="sigma must be between"):
        MaskPolicy(sigma=0)


@pytest.mark.slow
def test_masks_are_exact_integers_at_the_mask_level_and_wrap_below():
    """A value of |v| = B masked with sigma bits: the client's integer coefficients are m + r
    exactly (CRT against the unmasked plaintext), the server removes P(r) exactly and the value
    keeps the precision of a fresh encryption; one level lower the masked coefficients wrap
    around Q_L and the unmasked value is garbage."""
    params = params_for(8192, 3, 36)
    keys = KeyHolder(params)
    engine = keys.engine
    v = np.linspace(-3.0, 3.0, engine.slots)
    sigma = 24
    level = mask_level(params, 3.0, sigma)
    bits = sigma + 1 + int(np.ceil(np.log2(2 * 2.0**36 * 3.0)))  # w = sigma + 1 + ceil(log2 C)
    log_q = [np.log2(float(np.prod([float(q) for q in engine.primes[:k]]))) for k in range(1, 4)]
    assert log_q[level - 1] >= bits + 1 > log_q[level - 2]  # the lowest level without wrap-around
    ct = engine.mod_switch(keys.encrypt(v), level)
    m = rns.coefficients(engine, keys.decrypt_plaintext(ct))
    masked, real = mask(engine, ct, 3.0, sigma, level)
    u = rns.coefficients(engine, keys.decrypt_plaintext(masked))
    r = u - m  # the mask, exactly (python integers)
    assert all(-(2 ** (bits - 1)) <= x < 2 ** (bits - 1) for x in r) and max(abs(x) for x in r) > 2 ** (bits - 3)
    assert np.array_equal(real, rns.real_part(r))
    fresh = keys.encrypt_plaintext_bytes(rns.plaintext(engine, rns.real_part(u), engine.top_level, masked.scale))
    refreshed = unmask(engine, seal_from_bytes(sa.Ciphertext, fresh, engine.context, "ct"), real)
    error = np.abs(keys.decrypt(refreshed) - v).max()
    assert error < 2 * 3.0 * 2.0 ** -refresh_precision_bits(params, 3.0)  # two fresh encryptions' noise, no more
    low, low_real = mask(engine, engine.mod_switch(ct, level - 1), 3.0, sigma, level - 1)
    wrapped = rns.real_part(rns.coefficients(engine, keys.decrypt_plaintext(low))) - low_real
    assert np.abs((wrapped - rns.real_part(m)).astype(float)).max() > 2.0**40


# ---- encrypted rounds ---------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("net, max_levels, count", [("mlp", 4, 8), ("cnn", 3, 8)])
def test_refresh_rounds_agree_with_the_pann(request, digits, net, max_levels, count):
    pann = request.getfixturevalue(net)
    plan = he_backend.compile(pann, digits.input_shape, "batch", max_levels=max_levels, mask=MaskPolicy(sigma=SIGMA))
    assert plan.depth <= max_levels < he_backend.compile(pann, digits.input_shape).depth
    client = plan.client()
    server = he_backend.Server.from_bytes(plan.to_bytes(), client.public_context())
    x = digits.x_test[:count].numpy()
    with pytest.raises(he_backend.RefreshRequired, match="run_interactive"):
        server.run(client.encrypt(x))
    rounds = he_backend.Rounds()
    out = client.decrypt(he_backend.run_interactive(client, server, client.encrypt(x), rounds))
    ref = _reference(pann, x)
    assert rounds.count == len(plan.cuts) >= 1
    assert all(r["bytes_down"] > 0 and r["bytes_up"] > 0 for r in rounds.log)
    assert (out.argmax(1) == ref.argmax(1)).all()
    assert precision_bits(out, ref) > 12


def _client_view(client, blob):
    """The integer coefficients a curious client decrypts from a masked ciphertext, as floats."""
    engine = client.keys.engine
    pt = client.keys.decrypt_plaintext(seal_from_bytes(sa.Ciphertext, blob, engine.context, "ct"))
    return rns.coefficients(engine, pt).astype(float), pt.scale


@pytest.mark.slow
def test_periodic_values_are_masked_coefficient_by_coefficient(mlp, digits):
    """Sample packing: a value crossing a refresh repeats every ``M`` slots, each copy with its own
    CKKS noise. Every coefficient gets its own mask (one mask shared by coefficients would show
    the client their differences): neighbouring coefficients as the client sees them differ by
    the spread of two independent uniforms, each carries the full mask, and the rounds agree
    with the PANN."""
    plan = he_backend.compile(mlp, digits.input_shape, "sample", max_levels=4, mask=MaskPolicy(sigma=SIGMA))
    periods = {s.name: s.period for s in plan.steps if any(s.name in c.names for c in plan.cuts)}  # cut values are steps
    assert plan.cuts and any(0 < p < plan.params.slots for p in periods.values()), periods
    whole = plan.params.poly_modulus_degree * sum(len(c.names) for c in plan.cuts)  # every coefficient of every ciphertext
    assert plan.report()["refresh"]["masked_coefficients"] == whole
    client = plan.client()
    server = he_backend.Server.from_bytes(plan.to_bytes(), client.public_context())
    x = digits.x_test[:2].numpy()
    request = _first_round(plan, client, server, x)
    _, blobs = unpack(request, REQUEST_KIND)
    seen, scale = _client_view(client, blobs[0])
    width = 2.0 ** mask_bits(scale, plan.cuts[0].bounds[0], SIGMA)
    assert np.std(seen) == pytest.approx(width / np.sqrt(12), rel=0.05)  # uniform on [-W/2, W/2)
    assert np.std(np.diff(seen)) == pytest.approx(width / np.sqrt(6), rel=0.05)  # independent neighbours
    assert np.abs(seen).max() <= width / 2 + 4 * scale * plan.cuts[0].bounds[0]
    server.resume(client.refresh(request))
    rounds = he_backend.Rounds()
    out = client.decrypt(he_backend.run_interactive(client, server, client.encrypt(x), rounds))
    assert rounds.count == len(plan.cuts)
    assert precision_bits(out, _reference(mlp, x)) > 12


def _fields(data, kind):
    """Header (without the container's own fields) and sections, to forge variants."""
    header, sections = unpack(data, kind)
    return {k: v for k, v in header.items() if k not in ("kind", "sections")}, sections


def _first_round(plan, client, server, x):
    request = server.start(client.encrypt(x))
    assert he_backend.protocol.refresh.message_kind(request) == REQUEST_KIND
    return request


@pytest.mark.slow
def test_server_state_between_rounds_is_ciphertexts_and_masks(mlp_plan, mlp_pair, digits):
    """Between rounds the server holds its own masks (independent of the data) and the batch
    header, no ciphertext and no key that decrypts."""
    client, server = mlp_pair
    x = digits.x_test[:64].numpy()
    request = _first_round(mlp_plan, client, server, x)
    job = list(server._jobs.values())[-1]
    secret_types = (sa.SecretKey, sa.Decryptor, KeyHolder, he_backend.Client)
    for holder in (server, server.engine, server.runner):
        assert not any(isinstance(v, secret_types) for v in vars(holder).values())
    assert job.values == [{}]  # one ciphertext in flight; the server keeps none of its values, only masks
    assert set(vars(job)) == {"header", "values", "cut", "masks"} and set(job.header) <= {
        "block", "input_length", "output_length", "poly_modulus_degree", "coeff_bits", "samples", "per_ciphertext",
        "key", "input_layout"}
    cut = mlp_plan.cuts[0]
    masks = job.masks[0][0].astype(float)  # P(r): the real part of the integer mask, one per coefficient
    width = 2.0 ** mask_bits(mlp_plan.params.scale, cut.bounds[0], SIGMA)
    n = mlp_plan.params.poly_modulus_degree
    assert masks.shape == (n,) and np.abs(masks).max() <= width / 2
    assert np.std(masks) == pytest.approx(width / np.sqrt(24), rel=0.05)  # (r_j - r_{N-j}) / 2, triangular
    exact = job.masks[0][0]
    assert set(exact[1:] + exact[:0:-1]) <= {0, -1}  # P(r)_{N-j} = -P(r)_j up to the floor: real slots only
    server.resume(client.refresh(request))


@pytest.mark.slow
def test_client_view_at_a_refresh_is_masked(mlp_plan, mlp_pair, digits):
    """What the client decrypts at a refresh, the integer coefficients u = m + r, is uniform on
    [-W/2, W/2) (spread, centre, range), far from the plaintext m and uncorrelated with it; the
    server's P(r) takes it back to P(m) up to one unit per coefficient."""
    client, server = mlp_pair
    x = digits.x_test[:64].numpy()
    request = _first_round(mlp_plan, client, server, x)
    header, blobs = unpack(request, REQUEST_KIND)
    cut = mlp_plan.cuts[0]
    seen, scale = _client_view(client, blobs[0])
    width = 2.0 ** mask_bits(scale, cut.bounds[0], SIGMA)
    assert np.abs(seen).max() <= width / 2 * 1.0001
    assert np.std(seen) == pytest.approx(width / np.sqrt(12), rel=0.05)
    assert abs(np.mean(seen)) < 4 * width / np.sqrt(12 * seen.size)
    engine = client.keys.engine
    pt = client.keys.decrypt_plaintext(seal_from_bytes(sa.Ciphertext, blobs[0], engine.context, "ct"))
    job = server._jobs[header["round"]]
    plain = rns.real_part(rns.coefficients(engine, pt)) - job.masks[0][0]  # P(m), what the server restores
    assert np.abs(plain.astype(float)).max() <= 2 * scale * cut.bounds[0]  # within the coefficient bound C
    assert np.median(np.abs(seen)) > width / 8 > 2.0**SIGMA * np.abs(plain.astype(float)).max() / 8
    assert abs(np.corrcoef(seen[1:], plain[1:].astype(float))[0, 1]) < 5 / np.sqrt(seen.size)
    server.resume(client.refresh(request))  # finish the round so the job leaves the server


@pytest.mark.slow
def test_bad_round_bytes_are_rejected(mlp_plan, mlp_pair, digits):
    client, server = mlp_pair
    x = digits.x_test[:2].numpy()
    request = _first_round(mlp_plan, client, server, x)
    reply = client.refresh(request)
    header, blobs = _fields(reply, REPLY_KIND)
    bad = {
        "truncated": (reply[: len(reply) // 2], "truncated|corrupted"),
        "garbage": (b"garbage" * 100, "not a polyact"),
        "results instead": (client.encrypt(x), "expected a polyact refresh reply"),
        "unknown round": (pack(REPLY_KIND, {**header, "round": "forged"}, blobs), "answers no round in progress"),
        "wrong count": (pack(REPLY_KIND, header, blobs + blobs), "holds 2 ciphertexts, the round expects 1"),
        "zeroed ciphertext": (pack(REPLY_KIND, header, [blobs[0][:-300] + bytes(300)]),
                              "refreshed ciphertext is malformed"),
        "masked instead of fresh": (pack(REPLY_KIND, header, unpack(request, REQUEST_KIND)[1]), "expects fresh ciphertexts"),
    }
    for name, (data, message) in bad.items():
        with pytest.raises(he_backend.PayloadError, match=message):
            server.resume(data)
    out = client.decrypt(server.resume(reply))  # the round survives bad replies
    assert (out.argmax(1) == mlp_plan.simulate(x).argmax(1)).all()
    with pytest.raises(he_backend.PayloadError, match="already answered"):
        server.resume(reply)  # no replay
    with pytest.raises(he_backend.PayloadError, match="expected a polyact refresh request"):
        client.refresh(reply)
    request_header, masked = _fields(request, REQUEST_KIND)
    with pytest.raises(he_backend.PayloadError, match="another plan"):
        client.refresh(pack(REQUEST_KIND, {**request_header, "block": 2 * mlp_plan.block}, masked))


@pytest.mark.slow
def test_noise_flooding_adds_gaussian_noise_of_the_given_width(mlp_plan, mlp_pair, digits):
    client, server = mlp_pair
    flooded = he_backend.Server(mlp_plan, client.public_context(), flood_std=2.0**-8)
    x = digits.x_test[:8].numpy()
    plain = client.decrypt(he_backend.run_interactive(client, server, client.encrypt(x)))
    noisy = client.decrypt(he_backend.run_interactive(client, flooded, client.encrypt(x)))
    assert np.std(noisy - plain) == pytest.approx(2.0**-8, rel=0.3)
    with pytest.raises(ValueError, match="flood_std must be >= 0"):
        he_backend.Server(mlp_plan, client.public_context(), flood_std=-1.0)


# ---- the command line and the HTTP service --------------------------------------------------------
@pytest.mark.slow
def test_encrypt_run_drives_refresh_rounds(mlp, digits, tmp_path, capsys):
    from polyact.cli.commands import main
    from polyact.convert.storage import save_pann

    path = tmp_path / "mlp.pann"
    save_pann(mlp, path, input_shape=digits.input_shape)
    argv = ["encrypt-run", str(path), "--samples", "8", "--packing", "batch", "--max-levels", "4", "--json"]
    assert main(argv) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["rounds"] >= 1 and figures["bytes_down"] > 0 and figures["bytes_up"] > 0
    assert figures["agreement"] == 100.0
    assert main(argv[:-1] + ["--workers", "2"]) == 2
    assert "use workers=1" in capsys.readouterr().err


@pytest.fixture(scope="module")
def service(mlp_plan):
    import uvicorn

    from he_backend.service.app import ServiceLimits, create_app

    server = uvicorn.Server(uvicorn.Config(create_app(mlp_plan, ServiceLimits(max_body_bytes=20_000_000)),
                                           log_level="warning"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield "http://127.0.0.1:%d" % sock.getsockname()[1]
    server.should_exit = True
    thread.join(10)


@pytest.mark.slow
def test_service_rounds_per_session(service, mlp_plan, digits):
    from he_backend.service.remote import RemoteClient, ServiceError

    remote = RemoteClient(service)
    assert remote.plan.refreshes == len(mlp_plan.cuts)
    x = digits.x_test[:8].numpy()
    out = remote.infer(x)
    assert (out.argmax(1) == mlp_plan.simulate(x).argmax(1)).all()
    assert remote.rounds.count == len(mlp_plan.cuts) and remote.rounds.totals()["bytes_up"] > 0
    first = urllib.request.urlopen(urllib.request.Request(f"{service}/sessions/{remote.session}/infer",
                                                          data=remote.client.encrypt(x), method="POST",
                                                          headers={"Content-Type": "application/octet-stream"}),
                                   timeout=120)
    assert first.headers["X-Polyact-Kind"] == REQUEST_KIND and int(first.headers["X-Polyact-Bytes-Out"]) > 0
    request = first.read()
    other = RemoteClient(service)  # another session cannot answer this session's round
    with pytest.raises(ServiceError, match="400.*answers no round"):
        other._request("POST", f"/sessions/{other.session}/round", remote.client.refresh(request))
    with pytest.raises(ServiceError, match="400.*bad refresh reply"):
        remote._request("POST", f"/sessions/{remote.session}/round", b"POLYACT" + bytes(40))
    remote.close()
    other.close()


@pytest.mark.slow
def test_refresh_covers_every_ciphertext_of_a_value_spanning_several():
    """18 x 16 x 16 = 4608 values span two ciphertexts of 4096 slots at N = 8192: the refresh
    masks, sends, re-encrypts and unmasks both, and its byte count says so. (The second
    convolution narrows to 4 channels: the segment after the refresh stays small.)"""
    from torch import nn

    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(1, 18, 3, padding=1), nn.ReLU(), nn.Conv2d(18, 4, 3, padding=1), nn.ReLU(),
                          nn.AvgPool2d(4), nn.Flatten(), nn.Linear(4 * 16, 10)).eval()
    calib = torch.randn(32, 1, 16, 16)
    pann, _ = convert(model, calib, degree=2)
    pann = pann.double().eval()
    plan = he_backend.compile(pann, (1, 16, 16), params=params_for(8192, 4, 30), max_levels=3,
                              mask=MaskPolicy(sigma=20))
    assert len(plan.cuts) == 1 and [plan.ciphertexts(n) for n in plan.cuts[0].names] == [2]
    assert plan.params == params_for(8192, 4, 30)  # the caller's parameters, with segments of max_levels
    n, level, top = 8192, plan.cuts[0].mask_level, 5
    assert plan.refresh_report()["bytes_up"] == 2 * n * top * 8  # two seeded ciphertexts at the top
    assert plan.refresh_report()["bytes_down"] == 2 * 2 * n * level * 8
    client = plan.client()
    server = he_backend.Server.from_bytes(plan.to_bytes(), client.public_context())
    x = calib[:1].double().numpy()  # one image: its value already spans the two ciphertexts
    request = server.start(client.encrypt(x))
    assert unpack(request, REQUEST_KIND)[0]["count"] == 2 * len(x)  # sample packing: two ciphertexts per image
    out = client.decrypt(server.resume(client.refresh(request)))
    ref = _reference(pann, x)
    assert precision_bits(out, ref) > 8
    np.testing.assert_allclose(plan.simulate(x), ref, rtol=1e-9, atol=1e-9)

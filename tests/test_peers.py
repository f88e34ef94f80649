"""bench_peers' pieces that need no Orion: secure ring choice for Orion, the JSON-lines worker
protocol (errors come back as messages, library prints stay off the protocol)."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from he_backend.eval.params import MAX_LOG_Q

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_peers.py"
spec = importlib.util.spec_from_file_location("bench_peers", SCRIPT)
bench_peers = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_peers)


@pytest.mark.parametrize("levels, scale, logn, expect_scale", [(5, 40, 14, 40), (11, 38, 14, 29), (2, 30, 14, 30)])
def test_orion_ring_is_128_bit_secure(levels, scale, logn, expect_scale):
    got_logn, got_scale = bench_peers._orion_ring(levels, scale, logn)
    total = bench_peers.ORION_BASE_BITS + levels * got_scale + bench_peers.ORION_SPECIAL_BITS
    assert got_scale == expect_scale
    assert total <= MAX_LOG_Q[1 << got_logn]
    smaller = 1 << (got_logn - 1)
    assert got_scale < scale or smaller not in MAX_LOG_Q or total > MAX_LOG_Q[smaller]  # the smallest ring


def test_orion_ring_refuses_what_cannot_be_secure():
    with pytest.raises(ValueError, match="orion-logn"):
        bench_peers._orion_ring(40, 40, 13)


@pytest.mark.slow  # a fresh interpreter importing torch: seconds
def test_worker_answers_json_lines_and_reports_errors():
    env = {**os.environ, "PYTHONPATH": str(SCRIPT.parents[1])}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--worker", "polyact"], env=env, text=True,
                          input=json.dumps({"op": "infer", "network": "mlp", "npz": "/nonexistent.npz"}) + "\n",
                          capture_output=True, timeout=120)
    lines = proc.stdout.splitlines()
    assert len(lines) == 1
    reply = json.loads(lines[0])
    assert "nonexistent.npz" in reply["error"]

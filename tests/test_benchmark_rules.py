"""tools/benchmark_rules.py: the interval it prints for each median ratio, and a short run."""

import importlib.util
import json
import os
import random
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "tools", "benchmark_rules.py")


def _module():
    spec = importlib.util.spec_from_file_location("benchmark_rules", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_median_interval_order_statistics_and_coverage():
    interval = _module().median_interval
    # n = 41: 2 P(Binomial(41, 1/2) <= 13) = 0.028 <= 0.05 < 2 P(... <= 14) = 0.060, so the 95 %
    # interval is the 14th to the 28th value (0-based 13 and 27).
    assert interval(list(range(41))) == (13, 27)
    assert interval([5.0, 1.0, 3.0]) == (1.0, 5.0)  # too few values: the full range
    rng = random.Random(0)
    trials = [interval([rng.gauss(0, 1) for _ in range(31)]) for _ in range(2000)]
    coverage = sum(low <= 0 <= high for low, high in trials) / len(trials)
    assert 0.95 <= coverage <= 0.99


def test_benchmark_runs_and_reports_each_ratio_with_its_interval(tmp_path):
    out = tmp_path / "bench.jsonl"
    cmd = [
        sys.executable, SCRIPT, "--batch", "2", "--size", "32", "--rounds", "3", "--steps", "1",
        "--rules", "backprop", "sign_symmetry", "weight_mirror", "--json", str(out),
    ]  # fmt: skip
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(out.read_text().splitlines()[-1])
    names = set(record["variants"])
    assert {"native", "sign_symmetry", "weight_mirror (+ mirror / 20)"} <= names
    assert "sign_symmetry (eval, no_grad)" in names
    for name, v in record["variants"].items():
        low, high = v["ratio_95_interval"]
        assert low <= v["ratio_to_native"] <= high, name
        assert f"{name} " in result.stdout
    assert record["variants"]["native"]["ratio_95_interval"] == [1.0, 1.0]


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))

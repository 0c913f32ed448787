"""tools/benchmark_rules.py: the interval it prints for each median ratio, and a short run."""

import copy
import importlib.util
import json
import math
import os
import random
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "tools", "benchmark_rules.py")


# Starts processes or installs the package: part of `make test`, not `make test-fast`.
pytestmark = pytest.mark.slow


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


@pytest.mark.parametrize("amp", [False, True], ids=["float32", "bfloat16_autocast"])
def test_bare_function_rows_model_has_native_gradients(amp):
    # The "bare autograd.Function" row is only a floor if it does native autograd's arithmetic,
    # under autocast too (tools/check_gpu.sh runs the benchmark with --amp).
    import torch
    import torchvision
    from detectron2.layers import Conv2d

    module = _module()
    torch.manual_seed(0)
    base = torch.nn.Sequential(
        torchvision.models.resnet18(num_classes=10),
        torch.nn.Unflatten(1, (10, 1, 1)),
        Conv2d(10, 4, 1, bias=False, norm=torch.nn.BatchNorm2d(4), activation=torch.nn.ReLU()),
    )
    bare = module.bare_function_model(copy.deepcopy(base))
    x = torch.randn(2, 3, 32, 32)
    grads = []
    for model in (base, bare):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = model(x).float().square().sum()
        loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert set(grads[0]) == set(grads[1]) and len(grads[0]) == len(list(base.parameters()))
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-5, atol=1e-6, msg=name)
    assert sum(m.forward.__name__ == "conv_forward" for m in bare.modules()) == 21


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
    assert {"native, second copy", "bare autograd.Function"} <= names
    assert "sign_symmetry (eval, no_grad)" in names
    for name, v in record["variants"].items():
        low, high = v["ratio_95_interval"]
        assert low <= v["ratio_to_native"] <= high, name
        assert f"{name} " in result.stdout
    assert record["variants"]["native"]["ratio_95_interval"] == [1.0, 1.0]


@pytest.mark.slow
def test_compiled_rows_and_their_phases(tmp_path):
    out = tmp_path / "bench.jsonl"
    cmd = [
        sys.executable, SCRIPT, "--batch", "2", "--size", "32", "--rounds", "3", "--steps", "1",
        "--rules", "kolen_pollack", "--compile", "--compile-backend", "aot_eager", "--no-eager",
        "--eval-rules", "--json", str(out),
    ]  # fmt: skip
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(out.read_text().splitlines()[-1])
    compared_with = {  # compile_model's rows, and plain torch.compile(model)'s beside them
        "native (compiled)": "native (compiled)",
        "bare autograd.Function (compiled)": "native (compiled)",
        "kolen_pollack (compiled)": "native (compiled)",
        "native (torch.compile)": "native (compiled)",
        "kolen_pollack (torch.compile)": "native (torch.compile)",
    }
    variants = record["variants"]
    assert set(variants) == {"native"} | set(compared_with)
    assert {name: variants[name]["compared_with"] for name in compared_with} == compared_with
    assert record["compile_backend"] == "aot_eager" and record["plain_compile"] is True
    assert set(record["phases"]) == set(compared_with)
    for name in compared_with:
        phases = record["phases"][name]
        # Both phases are measured and reported; how they compare depends on the CPU and its load
        # (on a Xeon with AMX the optimizer phase once took longer), so no relation is asserted.
        assert phases["optimizer_s"] > 0 and phases["forward+backward_s"] > 0, name
        assert f"| {name} " in result.stdout.split("by phase")[1]


@pytest.mark.slow
@pytest.mark.parametrize(
    "arch, options",
    [
        ("vit_tiny", ["--compile", "--compile-backend", "aot_eager", "--no-plain-compile"]),
        ("resnet18", []),
    ],
)
def test_attention_and_direct_feedback_rows_with_their_phases(tmp_path, arch, options):
    # The rows of the attention model and of direct feedback alignment, each training row timed by
    # phase (--breakdown). Every rule converts both models, attention included: none is refused.
    out = tmp_path / "bench.jsonl"
    rules = ["sign_symmetry", "direct_feedback_alignment"]
    cmd = [
        sys.executable, SCRIPT, "--arch", arch, "--batch", "2", "--size", "32", "--rounds", "2",
        "--steps", "1", "--rules", *rules, "--eval-rules", "--breakdown", "--json", str(out),
        *options,
    ]  # fmt: skip
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(out.read_text().splitlines()[-1])
    assert record["arch"] == arch and record["breakdown"] is True
    variants, refused = record["variants"], record["refused"]
    assert not refused, refused
    compiled = " (compiled)" if "--compile" in options else None
    expected = {"native", "native, second copy", "bare autograd.Function"}
    if compiled:
        expected |= {"native (compiled)", "bare autograd.Function (compiled)"}
    for rule in rules:
        expected |= {rule} | ({rule + compiled} if compiled else set())
    assert set(variants) == expected
    for name, v in variants.items():
        assert math.isfinite(v["ratio_to_native"]) and v["median_step_s"] > 0, name
        assert f"| {name} " in result.stdout
    # Every training row by phase: forward, backward and optimizer step apart.
    assert set(record["phases"]) == set(variants)
    for name, phases in record["phases"].items():
        assert set(phases) == {"forward_s", "backward_s", "optimizer_s"}, name
        assert all(math.isfinite(t) and t > 0 for t in phases.values()), name
        assert f"| {name} " in result.stdout.split("Training rows by phase")[1]


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))

"""tools/compare_biotorch.py: our rules and biotorch's compute the same weight gradients, and a
short run reports top-1 and step times per implementation and rule."""

import copy
import json
import os
import subprocess
import sys

import pytest
import torch
import torchvision

pytest.importorskip(
    "biotorch",
    reason="biotorch is not importable (pip install biotorch==0.0.16 --no-deps): it is the peer "
    "these tests compare with, not a dependency",
)
compare = pytest.importorskip("compare_biotorch")  # tools/ is on sys.path (conftest)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "tools", "compare_biotorch.py")


def _batch(seed=0, size=16, batch=4):
    torch.manual_seed(seed)
    base = torchvision.models.resnet18(num_classes=compare.NUM_CLASSES)
    images = torch.randn(batch, 3, size, size, dtype=torch.float64)
    labels = torch.randint(compare.NUM_CLASSES, (batch,))
    return base, images, labels


def test_our_scale_is_biotorchs_usf_scale():
    # biotorch keeps its usf scale per layer as `scaling_factor`; the mapping reads none of its
    # code, so this fails when biotorch's scale changes.
    base, _, _ = _batch()
    theirs = compare.convert_biotorch(copy.deepcopy(base), "usf", seed=0)
    layers = [m for m in theirs.modules() if hasattr(m, "scaling_factor")]
    assert len(layers) == 21  # 20 convolutions and the classifier
    for layer in layers:
        assert layer.scaling_factor == pytest.approx(
            compare.biotorch_scale(layer.weight), rel=1e-12
        )
    theirs(torch.randn(2, 3, 16, 16))  # its B is made from the copied W in a forward pass
    ours = compare.convert_ours(copy.deepcopy(base), "usf", "biotorch", seed=0)
    for name, layer in ours.named_modules():
        if hasattr(layer, "learning_rule"):
            their_layer = dict(theirs.module.named_modules())[name]
            assert layer.learning_rule.scale == pytest.approx(their_layer.scaling_factor)
            torch.testing.assert_close(layer.feedback_weight(), their_layer.weight_backward)


@pytest.mark.parametrize("rule", ["backprop", "usf", "fa"])
def test_weight_gradients_equal_biotorchs_with_equal_feedback(rule):
    assert compare.check_gradients([rule], seed=0, our_scale="biotorch", size=16) == {rule: {}}


def test_gradient_check_sees_a_different_feedback():
    # The check must be able to fail: another scale for usf, and fa without biotorch's B.
    mismatch = compare.check_gradients(["usf"], seed=0, our_scale="kaiming", size=16)["usf"]
    assert "conv1.weight" in mismatch and "fc.bias" not in mismatch  # the last layer's own
    base, images, labels = _batch()
    ours = compare.convert_ours(copy.deepcopy(base), "fa", "biotorch", seed=0).double()
    theirs = compare.convert_biotorch(copy.deepcopy(base), "fa", seed=0).double()
    grads = [compare.weight_gradients(m, images, labels) for m in (ours, theirs)]
    assert "conv1.weight" in compare.gradient_mismatch(*grads)
    compare.copy_feedback_from_biotorch(ours, theirs)
    grads = [compare.weight_gradients(m, images, labels) for m in (ours, theirs)]
    assert compare.gradient_mismatch(*grads) == {}


def test_a_run_with_unequal_gradients_stops_naming_the_rule(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["compare_biotorch.py", "--rules", "usf", "--our-scale", "1"])
    with pytest.raises(SystemExit, match="usf: our weight gradients differ from biotorch's"):
        compare.main()


@pytest.mark.slow
def test_tiny_run_reports_each_implementation_and_rule(tmp_path):
    out = tmp_path / "compare.jsonl"
    cmd = [
        sys.executable, SCRIPT, "--root", str(tmp_path / "data"), "--size", "32",
        "--train-per-class", "2", "--val-per-class", "1", "--epochs", "1", "--batch", "4",
        "--warmup", "1", "--json", str(out),
    ]  # fmt: skip
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(out.read_text().splitlines()[-1])
    assert record["gradient_check"] == {"backprop": {}, "usf": {}, "fa": {}}
    assert set(record["rules"]) == {"backprop", "usf", "fa"}
    for rule, row in record["rules"].items():
        for impl in ("ours", "biotorch"):
            (top1,) = row["top1"][impl]
            assert top1 in {10.0 * k for k in range(11)}, (rule, impl)  # 10 val images
            assert row["step_ms"][impl] > 0
        assert row["timed_steps"] == 20 // 4 - 1
        low, high = row["ratio_interval"]
        assert low <= row["ratio_median"] <= high
        assert f"| {rule} ({compare.RULES[rule][0]}) |" in result.stdout
    assert "gradient check: backprop, usf, fa: equal to biotorch's" in result.stdout

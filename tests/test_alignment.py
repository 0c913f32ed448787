"""Alignment metrics, the probe, the training hook and the plot command."""

import copy
import importlib.util
import json
import math
import os
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from detectron2.engine import SimpleTrainer
from detectron2.engine.hooks import PeriodicWriter
from detectron2.engine.train_loop import HookBase, TrainerBase
from detectron2.utils.events import JSONWriter
from torch import nn

import bio_detectron as bd
from bio_detectron.core import alignment as al
from bio_detectron.core import probe
from bio_detectron.engine.alignment_hook import AlignmentHook, build_alignment_hook

LAYERS = ["conv1", "conv2", "fc1", "fc2"]


class TinyNet(nn.Module):
    """conv+BN+ReLU twice, dropout, two linear layers; returns a loss dict in training. Its loss is
    divided by an EMA kept as a plain attribute, like RetinaNet's loss normalizer."""

    def __init__(self, num_classes=5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.drop = nn.Dropout(0.3)
        self.fc1 = nn.Linear(64, 32)
        self.fc2 = nn.Linear(32, num_classes)
        self.normalizer = 1.0

    def forward(self, batch):
        x = F.relu(self.bn1(self.conv1(batch["image"])))
        x = F.relu(self.bn2(self.conv2(x)))
        x = self.drop(F.adaptive_avg_pool2d(x, 2).flatten(1))
        logits = self.fc2(F.relu(self.fc1(x)))
        correct = float((logits.argmax(1) == batch["label"]).sum())
        self.normalizer = 0.9 * self.normalizer + 0.1 * (1.0 + correct)
        return {
            "loss_cls": F.cross_entropy(logits, batch["label"]) * (4.0 / self.normalizer),
            "loss_reg": 1e-3 * logits.square().mean(),
        }


def _model(rule, seed=0):
    torch.manual_seed(seed)
    return bd.convert_model(TinyNet(), rule, seed=seed).train()


def _batches(n, batch_size=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "image": torch.randn(batch_size, 3, 8, 8, generator=g),
            "label": torch.randint(0, 5, (batch_size,), generator=g),
        }
        for _ in range(n)
    ]


def _grads_by_backward(model, batch, seed):
    model.zero_grad()
    torch.manual_seed(seed)
    sum(model(batch).values()).backward()
    return {name: getattr(model, name).weight.grad.clone() for name in LAYERS}


def test_backprop_is_aligned():
    model = _model("backprop")
    metrics = al.alignment_metrics(model, (_batches(1)[0],))
    for name in LAYERS:
        m = metrics[name]
        assert m["weight_angle"] == 0.0 and m["sign_concordance"] == 1.0
        assert m["norm_ratio"] == pytest.approx(1.0, abs=1e-12)
        assert 0.0 <= m["grad_angle"] < 1e-3, (name, m)
        assert m["grad_norm_ratio"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["mean"]["grad_angle"] < 1e-3 and metrics["all"]["grad_angle"] < 1e-3
    assert [metrics[n]["order"] for n in LAYERS] == [0.0, 1.0, 2.0, 3.0]


def test_sign_symmetry_concordance_and_angle_against_closed_form():
    model = _model("sign_symmetry")
    metrics = al.alignment_metrics(model)
    for name in LAYERS:
        w = getattr(model, name).weight.detach().double().flatten()
        # B = s * sign(W): cos(W, B) = sum|w| / (|w| * sqrt(n)), whatever s > 0.
        expected = math.degrees(math.acos(float(w.abs().sum() / (w.norm() * w.numel() ** 0.5))))
        assert metrics[name]["sign_concordance"] == 1.0
        assert metrics[name]["weight_angle"] == pytest.approx(expected, abs=1e-6)
        assert 20 < metrics[name]["weight_angle"] < 50  # about 37 deg for Gaussian-like W
    assert "grad_angle" not in metrics["conv1"]  # no probe without inputs


def test_feedback_alignment_starts_unaligned_and_matches_independent_gradients():
    torch.manual_seed(0)
    plain = TinyNet().train()
    model = bd.convert_model(copy.deepcopy(plain), "feedback_alignment", seed=3)
    batch = _batches(1, batch_size=32)[0]

    torch.manual_seed(7)  # both probe passes replay this state: the same dropout mask
    metrics = al.alignment_metrics(model, (batch,))
    own = _grads_by_backward(model, batch, seed=7)
    exact = _grads_by_backward(plain, batch, seed=7)

    for name in LAYERS:
        m = getattr(model, name)
        w, b = m.weight.detach().double().flatten(), m.feedback.double().flatten()
        cos = float(w.dot(b) / (w.norm() * b.norm()))
        assert metrics[name]["weight_angle"] == pytest.approx(
            math.degrees(math.acos(cos)), abs=1e-6
        )
        assert 60 < metrics[name]["weight_angle"] < 120
        cos = F.cosine_similarity(own[name].double().flatten(), exact[name].double().flatten(), 0)
        assert metrics[name]["grad_angle"] == pytest.approx(
            math.degrees(math.acos(float(cos))), abs=1e-2
        )
        ratio = float(own[name].double().norm() / exact[name].double().norm())
        assert metrics[name]["grad_norm_ratio"] == pytest.approx(ratio, rel=1e-4)
    # The last layer's output gradient is exact; the first layer's update is far from backprop's.
    assert metrics["fc2"]["grad_angle"] < 1e-3
    assert metrics["conv1"]["grad_angle"] > 45
    assert metrics["fc2"]["grad_norm_ratio"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["conv1"]["grad_norm_ratio"] != pytest.approx(1.0, abs=1e-2)
    assert metrics["mean"]["weight_angle"] == pytest.approx(
        np.mean([metrics[n]["weight_angle"] for n in LAYERS])
    )


def test_probe_is_faithful_and_changes_nothing():
    model = _model("feedback_alignment")
    batch = _batches(1)[0]
    rules = {n: getattr(model, n).learning_rule for n in LAYERS}
    feedback = {n: getattr(model, n).feedback for n in LAYERS}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    normalizer = model.normalizer
    torch.manual_seed(11), random.seed(11), np.random.seed(11)

    calls = []  # a trainer's hook on the model (e.g. a loss check) must not see the probe
    model.register_forward_hook(lambda *args: calls.append(1))

    grads = probe.probe_gradients(model, (batch,))
    assert calls == []

    # Everything as before: buffers, plain attributes, rules, mode, RNGs, no .grad.
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert model.normalizer == normalizer and model.training
    assert all(getattr(model, n).learning_rule is rules[n] for n in LAYERS)
    assert all(getattr(model, n).feedback is feedback[n] for n in LAYERS)
    assert all(p.grad is None for p in model.parameters())
    probe_draws = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(11), random.seed(11), np.random.seed(11)
    assert torch.equal(probe_draws[0], torch.rand(3))
    assert probe_draws[1:] == (random.random(), np.random.rand())
    # The rule pass is exactly the training backward (same RNG state, same weights).
    trained = _grads_by_backward(model, batch, seed=11)
    for name in LAYERS:
        assert torch.equal(grads[name][0], trained[name])
        assert not torch.equal(grads[name][1], trained[name]) or name == "fc2"


class Shuffled(nn.Module):
    """Layers registered in another order than the forward calls them; one frozen, one unused."""

    def __init__(self):
        super().__init__()
        self.out = nn.Linear(4, 2)
        self.unused = nn.Linear(2, 2)
        self.mid = nn.Linear(4, 4).requires_grad_(False)
        self.inp = nn.Linear(3, 4)

    def forward(self, x):
        return self.out(F.relu(self.mid(F.relu(self.inp(x))))).square().mean()


def test_order_is_forward_order_and_unreached_layers_have_no_grad_angle():
    torch.manual_seed(0)
    model = bd.convert_model(Shuffled(), "feedback_alignment")
    x = torch.randn(8, 3)
    without_probe = al.alignment_metrics(model)
    assert [without_probe[n]["order"] for n in ("out", "unused", "mid", "inp")] == [0, 1, 2, 3]
    metrics = al.alignment_metrics(model, (x,))
    assert [metrics[n]["order"] for n in ("inp", "mid", "out", "unused")] == [0, 1, 2, 3]
    assert list(probe.probe_gradients(model, (x,))) == ["inp", "out", "unused"]  # not the frozen
    assert math.isnan(metrics["unused"]["grad_angle"]) and "grad_angle" not in metrics["mid"]
    assert metrics["out"]["grad_angle"] < 1e-3 and metrics["inp"]["grad_angle"] > 1
    scalars = al.alignment_scalars(metrics)
    assert "alignment/unused/grad_angle" not in scalars  # NaN is left out
    assert scalars["alignment/mid/weight_angle"] == metrics["mid"]["weight_angle"]
    assert scalars["alignment/mean/grad_angle"] == pytest.approx(
        (metrics["inp"]["grad_angle"] + metrics["out"]["grad_angle"]) / 2
    )
    assert al.parse_scalar_name("alignment/backbone.res2.0.conv1/grad_angle") == (
        "backbone.res2.0.conv1",
        "grad_angle",
    )
    assert al.parse_scalar_name("alignment/x/lr") is None and al.parse_scalar_name("lr") is None


def test_bad_inputs():
    model = _model("backprop")
    with pytest.raises(TypeError, match=r"args must be the tuple .* got a dict"):
        probe.probe_gradients(model, _batches(1)[0])
    with pytest.raises(TypeError, match="not a converted layer"):
        al.weight_angle(nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"period=-1: must be an integer >= 0"):
        AlignmentHook(-1, model)
    logits_model = nn.Sequential(bd.convert_model(nn.Linear(4, 3), "backprop"))
    with pytest.raises(ValueError, match=r"tensor of shape \(2, 3\), not a scalar loss"):
        probe.probe_gradients(logits_model, (torch.randn(2, 4),))
    grads = probe.probe_gradients(
        logits_model, (torch.randn(2, 4),), loss_fn=lambda out: out.square().sum()
    )
    assert list(grads) == ["0"] and grads["0"][0].shape == (3, 4)


class _Recorder(HookBase):
    """Records, before each step's forward, how many forward pre-hooks the model has."""

    def __init__(self, model):
        self.model, self.pre_hooks = model, []

    def before_step(self):
        self.pre_hooks.append(len(self.model._forward_pre_hooks))


def _train(rule, hooks_for, iters=4, metrics_path=None, wrap=None):
    model = _model(rule)
    trained = wrap(model) if wrap else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    trainer = SimpleTrainer(trained, _batches(iters), optimizer)
    hooks = hooks_for(model)
    if metrics_path:
        hooks.append(PeriodicWriter([JSONWriter(metrics_path)], period=1))
    trainer.register_hooks(hooks)
    torch.manual_seed(5)
    trainer.train(0, iters)
    return model, optimizer, trainer.storage


def _assert_same_training(a, b):
    (model_a, opt_a, _), (model_b, opt_b, _) = a, b
    sa, sb = model_a.state_dict(), model_b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert model_a.normalizer == model_b.normalizer
    state_a, state_b = opt_a.state_dict()["state"], opt_b.state_dict()["state"]
    assert state_a.keys() == state_b.keys() and len(state_a) == len(list(model_a.parameters()))
    for i in state_a:
        assert torch.equal(state_a[i]["momentum_buffer"], state_b[i]["momentum_buffer"])


def test_hook_leaves_trajectory_unchanged_and_logs(tmp_path):
    path = str(tmp_path / "metrics.json")
    recorders = []

    def hooks(model):
        recorders.append(_Recorder(model))
        return [AlignmentHook(1, model), recorders[-1]]

    with_hook = _train("feedback_alignment", hooks, metrics_path=path)
    without = _train("feedback_alignment", lambda m: [])
    _assert_same_training(with_hook, without)
    assert any(
        not torch.equal(p, q)
        for p, q in zip(with_hook[0].parameters(), _model("backprop").parameters())
    )

    storage = with_hook[2]
    history = storage.history("alignment/conv1/grad_angle").values()
    assert [it for _, it in history] == [0, 1, 2, 3]
    assert all(30 < v < 150 for v, _ in history)
    assert storage.history("alignment/fc2/grad_angle").latest() < 1e-3
    assert recorders[0].pre_hooks == [1, 1, 1, 1]  # one pre-hook, put before each logging step
    assert len(with_hook[0]._forward_pre_hooks) == 0  # and removed by the forward

    records = [json.loads(line) for line in open(path)]
    assert [r["iteration"] for r in records] == [0, 1, 2, 3]
    for r in records:
        for name in LAYERS:
            assert 0 <= r[f"alignment/{name}/grad_angle"] <= 180
            assert 0 <= r[f"alignment/{name}/weight_angle"] <= 180
            assert 0 <= r[f"alignment/{name}/sign_concordance"] <= 1
        assert "alignment/mean/grad_angle" in r and "alignment/all/grad_angle" in r
        assert "total_loss" in r
    assert [records[0][f"alignment/{n}/order"] for n in LAYERS] == [0, 1, 2, 3]
    assert not any(k.endswith("/order") for r in records[1:] for k in r)


def test_period_zero_and_between_logging_iterations_cost_nothing():
    from detectron2.config import get_cfg

    from bio_detectron.config import add_bio_config

    cfg = get_cfg()
    add_bio_config(cfg)
    assert cfg.MODEL.BIO.ALIGNMENT.PERIOD == 0
    assert build_alignment_hook(cfg, _model("backprop")) is None
    cfg.MODEL.BIO.ALIGNMENT.PERIOD = 3
    assert build_alignment_hook(cfg).period == 3
    cfg.MODEL.BIO.ALIGNMENT.PERIOD = "2"
    with pytest.raises(ValueError, match=r"MODEL.BIO.ALIGNMENT.PERIOD='2'"):
        build_alignment_hook(cfg)

    for period, expected in ((0, [0] * 6), (3, [0, 0, 1, 0, 0, 1])):
        recorders = []

        def hooks(model):
            recorders.append(_Recorder(model))
            return [AlignmentHook(period), recorders[-1]]

        _, _, storage = _train("sign_symmetry", hooks, iters=6)
        assert recorders[0].pre_hooks == expected
        logged = (
            sorted(it for _, it in storage.history("alignment/conv2/grad_angle").values())
            if period
            else []
        )
        assert logged == ([2, 5] if period else [])
        assert period or not any(k.startswith("alignment/") for k in storage.histories())


class _GradReader(HookBase):
    """Keeps the gradients the training backward left in .grad, before the optimizer step."""

    def __init__(self, model):
        self.model, self.grads = model, []

    def after_backward(self):
        self.grads.append({n: getattr(self.model, n).weight.grad.clone() for n in LAYERS})


def test_hook_probe_replays_the_training_forward(monkeypatch):
    probed = []

    def recording_probe(*args, **kwargs):
        probed.append(al_probe(*args, **kwargs))
        return probed[-1]

    al_probe = probe._probe
    monkeypatch.setattr(al, "_probe", recording_probe)
    readers = []

    def hooks(model):
        readers.append(_GradReader(model))
        return [AlignmentHook(2, model), readers[-1]]

    _train("feedback_alignment", hooks, iters=4)
    assert len(probed) == 2 and len(readers[0].grads) == 4
    # The rule's pass of the probe gives exactly the step's gradients: same batch, same dropout
    # masks (the random state before the training forward is replayed), same loss normaliser.
    for (grads, _), step in zip(probed, (1, 3)):
        for name in LAYERS:
            assert torch.equal(grads[name][0], readers[0].grads[step][name]), (name, step)


class _OuterTrainer(TrainerBase):
    """Like DefaultTrainer: keeps the hooks, delegates each step to an inner SimpleTrainer (whose
    after_backward reaches only its own hooks), exposes the inner model and optimizer."""

    def __init__(self, inner):
        super().__init__()
        self._trainer = inner

    @property
    def model(self):
        return self._trainer.model

    @property
    def optimizer(self):
        return self._trainer.optimizer

    def run_step(self):
        self._trainer.iter = self.iter
        self._trainer.run_step()


def test_default_trainer_layout_probes_before_the_optimizer_step():
    def run(with_hook):
        model = _model("sign_symmetry")
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        trainer = _OuterTrainer(SimpleTrainer(model, _batches(3), optimizer))
        trainer.register_hooks([AlignmentHook(1)] if with_hook else [])
        torch.manual_seed(5)
        trainer.train(0, 3)
        return model, optimizer, trainer.storage

    with_hook, without = run(True), run(False)
    _assert_same_training(with_hook, without)
    values = with_hook[2].history("alignment/conv1/grad_angle").values()
    assert len(values) == 3 and all(0 < v < 90 for v, _ in values)


def test_ddp_single_process_trajectory_unchanged(tmp_path):
    import torch.distributed as dist

    if not dist.is_available() or dist.is_initialized():
        pytest.skip("torch.distributed unavailable or already initialised")
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        wrap = nn.parallel.DistributedDataParallel
        hook = lambda model: [AlignmentHook(2, model)]  # noqa: E731
        with_hook = _train("feedback_alignment", lambda m: [AlignmentHook(2)], wrap=wrap)
        without = _train("feedback_alignment", lambda m: [], wrap=wrap)
        explicit = _train("feedback_alignment", hook, wrap=wrap)
        # Synchronised BatchNorm would all-reduce (and refuse CPU tensors) once a process group
        # exists; in the probe it normalises locally, as plain BatchNorm does.
        plain = _model("feedback_alignment")
        synced = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(plain))
        batch = _batches(1)[0]
        with pytest.raises(ValueError, match="SyncBatchNorm expected input tensor to be on GPU"):
            synced(batch)
        torch.manual_seed(0)
        expected = probe.probe_gradients(plain, (batch,))
        torch.manual_seed(0)
        got = probe.probe_gradients(synced, (batch,))
        assert "forward" not in synced.bn1.__dict__
    finally:
        dist.destroy_process_group()
    _assert_same_training(with_hook, without)
    _assert_same_training(explicit, without)
    assert len(with_hook[2].history("alignment/conv1/grad_angle").values()) == 2
    for name in LAYERS:
        assert torch.equal(got[name][0], expected[name][0])
        assert torch.equal(got[name][1], expected[name][1])


# ----------------------------------------------------------------------------------------------
# tools/plot_alignment.py
# ----------------------------------------------------------------------------------------------
def _plot_tool():
    path = os.path.join(os.path.dirname(__file__), os.pardir, "tools", "plot_alignment.py")
    spec = importlib.util.spec_from_file_location("plot_alignment", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_run(folder, rule, layers=30, alignment=True, ap_key="bbox/AP"):
    os.makedirs(folder)
    names = [f"backbone.res{2 + i // 10}.{i % 10}.conv1" for i in range(layers)] + [
        "head.cls_score"
    ]
    with open(os.path.join(folder, "metrics.json"), "w") as f:
        for k, it in enumerate(range(19, 400, 20)):
            r = {"iteration": it, "total_loss": 2.0 / (1 + 0.1 * k), "lr": 0.01}
            if alignment:
                for d, name in enumerate(names):
                    r[f"alignment/{name}/grad_angle"] = 80 * math.exp(-k / 5) * (1 - d / len(names))
                    r[f"alignment/{name}/weight_angle"] = 90 - k * d / len(names)
                    if name != "head.cls_score":  # on backprop: not logged
                        r[f"alignment/{name}/grad_norm_ratio"] = 10 ** (d / 10 - 2) * (1 + k)
                    if k == 0:
                        r[f"alignment/{name}/order"] = d
                r["alignment/mean/grad_angle"] = 40 * math.exp(-k / 5)
                r["alignment/mean/weight_angle"] = 90 - k / 2
            if it % 100 == 99:
                r[ap_key] = 5.0 * k
            f.write(json.dumps(r, sort_keys=True) + "\n")
    with open(os.path.join(folder, "config.yaml"), "w") as f:
        f.write(f"MODEL:\n  BIO:\n    RULE: {rule}\n    PARTS:\n      PREDICTOR: ''\n")


def _is_png(path):
    with open(path, "rb") as f:
        return f.read(8) == b"\x89PNG\r\n\x1a\n" and os.path.getsize(path) > 10_000


@pytest.mark.slow
def test_plot_alignment_writes_pngs(tmp_path):
    tool = _plot_tool()
    a, b = str(tmp_path / "ss_run"), str(tmp_path / "fa_run")
    _write_run(a, "sign_symmetry")
    _write_run(b, "feedback_alignment", ap_key="val/top1")
    written = tool.main([a, b])
    names = sorted(os.path.basename(p) for p in written)
    assert names == ["alignment_fa_run.png", "alignment_ss_run.png", "curves_ss_run_vs_fa_run.png"]
    assert all(os.path.dirname(p) == a and _is_png(p) for p in written)
    runs = [tool.Run(a), tool.Run(b)]
    assert [r.label for r in runs] == ["sign_symmetry", "feedback_alignment"]
    assert tool.eval_metric(runs) == "bbox/AP" and tool.eval_metric(runs[1:]) == "val/top1"
    order = tool.layer_order(runs[0])
    assert (
        order[0] == "backbone.res2.0.conv1" and order[-1] == "head.cls_score" and len(order) == 31
    )


@pytest.mark.slow
def test_plot_alignment_errors_name_the_folder(tmp_path):
    tool = _plot_tool()
    empty = str(tmp_path / "empty")
    os.makedirs(empty)
    with pytest.raises(SystemExit, match=f"{empty}: no metrics.json"):
        tool.main([empty])
    a, plain = str(tmp_path / "a"), str(tmp_path / "plain")
    _write_run(a, "backprop")
    _write_run(plain, "backprop", alignment=False)
    out = str(tmp_path / "figures")
    with pytest.raises(SystemExit, match=f"{plain}: metrics.json has no alignment"):
        tool.main([a, plain, "-o", out])
    # The comparison and the run with alignment scalars were still drawn; same rule: folder names.
    assert sorted(os.listdir(out)) == ["alignment_a.png", "curves_a_vs_plain.png"]
    assert tool.main([plain, "--no-layers"]) == [os.path.join(plain, "curves_plain.png")]

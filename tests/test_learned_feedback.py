"""Rules whose B learns: kolen_pollack (trained like W), weight_mirror (mirror steps on noise)."""

import copy
import logging

import pytest
import torch
import torch.nn.functional as F
from detectron2.checkpoint import Checkpointer
from detectron2.config import get_cfg
from detectron2.engine import SimpleTrainer
from torch import nn

import bio_detectron as bd
from bio_detectron.config import add_bio_config
from bio_detectron.core import alignment as al
from bio_detectron.core.mirror import (
    mirror_correlation,
    mirror_layers,
    mirror_step,
    noise_batch_for,
)
from bio_detectron.core.probe import converted_layers
from bio_detectron.core.rules import layer_seed
from bio_detectron.engine.mirror_hook import (
    DEFAULTS,
    WeightMirrorHook,
    build_weight_mirror_hook,
    weight_mirror_hook,
)

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    # torch notes, at construction, the input copy that padding='same' with an even kernel needs:
    # a test here builds such a conv on purpose.
    pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths"),
]


class Net(nn.Module):
    """conv-BN-ReLU twice, dropout and two linear layers; returns a loss in training."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.drop = nn.Dropout(0.3)
        self.fc1 = nn.Linear(64, 32)
        self.fc2 = nn.Linear(32, 5)

    def forward(self, batch):
        x = F.relu(self.bn1(self.conv1(batch["image"])))
        x = F.relu(self.conv2(x))
        x = self.drop(F.adaptive_avg_pool2d(x, 2).flatten(1))
        return F.cross_entropy(self.fc2(F.relu(self.fc1(x))), batch["label"])


def _batches(n, batch_size=16, seed=1):
    """A learnable task: each class is a fixed random image, seen through noise."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.randn(5, 3, 8, 8, generator=g)
    batches = []
    for _ in range(n):
        labels = torch.randint(0, 5, (batch_size,), generator=g)
        images = templates[labels] + torch.randn(batch_size, 3, 8, 8, generator=g)
        batches.append({"image": images, "label": labels})
    return batches


def _net(rule, seed=0, **convert):
    torch.manual_seed(seed)
    return bd.convert_model(Net().double(), rule, seed=seed, **convert).train()


def _double(batch):
    return {"image": batch["image"].double(), "label": batch["label"]}


def _differences(model):
    return {n: (m.weight - m.feedback).detach().clone() for n, m in converted_layers(model)}


# --- Kolen-Pollack -----------------------------------------------------------------------------


def test_kolen_pollack_feedback_gets_exactly_the_weight_gradient():
    model = _net("kolen_pollack")
    for _, m in converted_layers(model):
        assert isinstance(m.feedback, nn.Parameter)
    model(_double(_batches(1)[0])).backward()
    for name, m in converted_layers(model):
        assert torch.equal(m.feedback.grad, m.weight.grad), name
        assert m.feedback.grad.data_ptr() != m.weight.grad.data_ptr(), name  # not aliased
    # B, not W, carried the input gradients: the same loss under backprop differs below fc2.
    ref = _net("backprop")
    ref.load_state_dict(model.state_dict(), strict=False)
    ref(_double(_batches(1)[0])).backward()
    assert torch.equal(ref.fc2.weight.grad, model.fc2.weight.grad)
    assert not torch.allclose(ref.conv1.weight.grad, model.conv1.weight.grad)


def test_kolen_pollack_sgd_shrinks_w_minus_b_by_the_weight_decay():
    lr, wd, mu = 0.1, 0.05, 0.9
    for momentum in (0.0, mu):
        model = _net("kolen_pollack")
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=wd)
        history = []
        for batch in _batches(3):
            history.append(_differences(model))
            opt.zero_grad()
            model(_double(batch)).backward()
            opt.step()
        history.append(_differences(model))
        for name in history[0]:
            d0, d1, d2, d3 = (h[name] for h in history)
            torch.testing.assert_close(d1, (1 - lr * wd) * d0, rtol=1e-12, atol=1e-15)
            if momentum == 0:
                torch.testing.assert_close(d3, (1 - lr * wd) ** 3 * d0, rtol=1e-12, atol=1e-15)
            else:  # the difference's own momentum: v1 = wd d0, v2 = mu v1 + wd d1
                v2 = mu * wd * d0 + wd * d1
                torch.testing.assert_close(d2, d1 - lr * v2, rtol=1e-12, atol=1e-15)
        assert not torch.equal(model.conv1.feedback, model.conv1.weight)


def test_kolen_pollack_with_adamw_moves_b_as_w():
    # An adaptive optimizer: B's update equals W's as its gradients do; decoupled decay shrinks W-B.
    model = _net("kolen_pollack")
    lr, wd = 0.01, 0.1
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    before = _differences(model)
    for batch in _batches(2):
        opt.zero_grad()
        model(_double(batch)).backward()
        opt.step()
    for name, d in _differences(model).items():
        torch.testing.assert_close(d, (1 - lr * wd) ** 2 * before[name], rtol=1e-10, atol=1e-14)


def test_kolen_pollack_frozen_weight_freezes_b_and_probe_gives_b_no_gradient():
    model = _net("kolen_pollack")
    model.conv2.weight.requires_grad_(False)
    batch = _double(_batches(1)[0])
    # The alignment probe lends the backprop rule: no gradient for B from that pass, no error.
    metrics = al.alignment_metrics(model, (batch,), loss_fn=lambda loss: loss)
    assert 0 <= metrics["conv1"]["grad_angle"] < 180
    assert all(p.grad is None for p in model.parameters())
    model(batch).backward()
    assert model.conv2.feedback.grad is None and model.conv2.weight.grad is None
    assert torch.equal(model.conv1.feedback.grad, model.conv1.weight.grad)


def test_kolen_pollack_feedback_saved_and_resumed_exactly(tmp_path):
    def train(model, opt, batches):
        for batch in batches:
            opt.zero_grad()
            model(_double(batch)).backward()
            opt.step()

    batches = _batches(4)
    model = _net("kolen_pollack")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.05)
    train(model, opt, batches[:2])
    Checkpointer(model, str(tmp_path), optimizer=opt).save("ckpt")

    resumed = _net("kolen_pollack", seed=7)  # other weights and another random B
    resumed_opt = torch.optim.SGD(resumed.parameters(), lr=0.1, momentum=0.9, weight_decay=0.05)
    Checkpointer(resumed, str(tmp_path), optimizer=resumed_opt).load(str(tmp_path / "ckpt.pth"))
    assert resumed.conv1._feedback_restored  # the checkpoint's B, not one made again
    for a, b in zip(model.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    torch.manual_seed(3)
    train(model, opt, batches[2:])
    torch.manual_seed(3)
    train(resumed, resumed_opt, batches[2:])
    for (k, a), b in zip(model.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


# --- Weight mirror: one step by hand ------------------------------------------------------------


def _noise(layer, name, shape, std, seed, step):
    g = torch.Generator().manual_seed(layer_seed(seed, f"{name}/mirror/{step}"))
    return (torch.randn(shape, generator=g) * std).double()


def test_mirror_step_linear_by_hand():
    torch.manual_seed(0)
    fc = bd.convert_model(nn.Linear(5, 3).double(), "weight_mirror", seed=2)
    fc.make_feedback_now()
    b0 = fc.feedback.clone()
    mirror_step(fc, (7, 5), std=0.5, lr=0.3, decay=0.1, noise_batch=7, seed=1, step=4, name="fc")
    x = _noise(fc, "fc", (7, 5), 0.5, 1, 4)
    w = fc.weight.detach()
    y = x @ w.t()
    expected = 0.9 * b0 + 0.3 * sum(torch.outer(y[i], x[i]) for i in range(7)) / 7
    torch.testing.assert_close(fc.feedback, expected)
    # noise_batch 0: enough rows for samples_per_input x fan-in (5) products per weight
    mirror_step(fc, (7, 5), std=0.5, lr=0.3, decay=0.1, samples_per_input=2.0, seed=1, step=5,
                name="fc")  # fmt: skip
    x = _noise(fc, "fc", (10, 5), 0.5, 1, 5)
    y = x @ w.t()
    torch.testing.assert_close(fc.feedback, 0.9 * expected + 0.3 * y.t() @ x / 10)


def test_mirror_step_conv_by_hand():
    torch.manual_seed(0)
    conv = bd.convert_model(nn.Conv2d(2, 3, 3, stride=2, padding=1).double(), "weight_mirror")
    conv.make_feedback_now()
    b0 = conv.feedback.clone()
    shape = (2, 2, 7, 6)
    mirror_step(conv, shape, std=2.0, lr=0.25, decay=0.5, noise_batch=2, seed=0, step=0, name="c")
    x = _noise(conv, "c", shape, 2.0, 0, 0)
    # Unfolded: columns (N, C*9, L) of every output position; y = W x, without the bias.
    cols = F.unfold(x, 3, padding=1, stride=2)
    y = conv.weight.detach().reshape(3, -1) @ cols
    sums = sum(y[n] @ cols[n].t() for n in range(2))  # (3, C*9)
    # Each kernel offset sums over the positions where it meets the image, not the padding.
    counts = F.unfold(torch.ones(1, 1, 7, 6, dtype=torch.double), 3, padding=1, stride=2)
    counts = 2 * counts.sum(-1).reshape(1, 1, 3, 3)
    corr = sums.reshape(3, 2, 3, 3) / counts
    torch.testing.assert_close(conv.feedback, 0.5 * b0 + 0.25 * corr)


def test_noise_batch_gives_every_layer_the_same_samples_per_fan_in():
    # 18 inputs per output; 12 positions per sample at 7x6 with stride 2 (fewer at the border)
    conv = nn.Conv2d(2, 3, 3, stride=2, padding=1)
    counts = F.unfold(torch.ones(1, 1, 7, 6), 3, padding=1, stride=2).sum(-1)  # per offset
    assert noise_batch_for(conv, (5, 2, 7, 6), 1.0) == int(torch.ceil(18 / counts.mean()))
    assert noise_batch_for(conv, (5, 2, 70, 60), 1.0) == 1
    assert noise_batch_for(nn.Linear(64, 3), (5, 64), 0.25) == 16
    assert noise_batch_for(nn.Linear(64, 3), (5, 4, 64), 0.25) == 4  # 4 rows per sample


@pytest.mark.parametrize(
    "layer,shape",
    [
        (lambda: nn.Linear(12, 5), (3000, 12)),
        (lambda: nn.Conv2d(3, 4, 3, padding=1), (100, 3, 8, 8)),
        (lambda: nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2), (100, 4, 9, 8)),
        (lambda: nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, groups=2), (100, 4, 6, 7)),
        (lambda: nn.Conv1d(3, 5, 4, padding="same", padding_mode="reflect"), (400, 3, 11)),
    ],
)
def test_expected_mirror_correlation_is_sigma_squared_w(layer, shape):
    torch.manual_seed(0)
    m = bd.convert_model(layer().double(), "weight_mirror")
    corr = sum(mirror_correlation(m, 2.0 * torch.randn(shape).double()) for _ in range(10)) / 10
    w = m.weight.detach()
    assert al.angle_between(corr, w) < 2.0
    assert float(corr.norm() / w.norm()) == pytest.approx(4.0, rel=0.03)


# --- Weight mirror: the hook --------------------------------------------------------------------


def _train(model, hooks, iters=6):
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    trainer = SimpleTrainer(model, [_double(b) for b in _batches(iters)], opt)
    trainer.register_hooks(hooks)
    torch.manual_seed(5)
    trainer.train(0, iters)
    return model, opt


def test_mirror_hook_changes_only_b_bitwise():
    # conv1's input needs no gradient, so its B changes nothing else; dropout would see any draw
    # from the global random number generator.
    def model():
        return _net("weight_mirror", include=r"^conv1$")

    with_hook, opt_a = _train(model(), [weight_mirror_hook(period=2, initial_steps=3, seed=1)])
    without, opt_b = _train(model(), [])
    sa, sb = with_hook.state_dict(), without.state_dict()
    for k in sa:
        if k == "conv1.feedback":
            assert not torch.equal(sa[k], sb[k])
        else:
            assert torch.equal(sa[k], sb[k]), k
    for i, state in opt_a.state_dict()["state"].items():
        assert torch.equal(
            state["momentum_buffer"], opt_b.state_dict()["state"][i]["momentum_buffer"]
        )
    assert not with_hook.conv1._forward_pre_hooks  # the shape recorders are gone


def test_mirror_hook_steps_when_due_and_only_then(monkeypatch):
    steps = []
    monkeypatch.setattr(
        "bio_detectron.engine.mirror_hook.mirror_step",
        lambda layer, shape, *, step, name, **kw: steps.append((name, shape, step)),
    )
    _train(_net("weight_mirror"), [WeightMirrorHook(3, initial_steps=2)], iters=7)
    conv1 = [(shape, step) for name, shape, step in steps if name == "conv1"]
    assert conv1 == [((16, 3, 8, 8), s) for s in ("0.0", "0.1", "2.0", "5.0")]
    assert {name for name, _, _ in steps} == {"conv1", "conv2", "fc1", "fc2"}
    assert ("fc1", (16, 64), "5.0") in steps


def test_weight_angle_falls_towards_zero_during_training():
    def angles(model):
        return [al.weight_angle(m) for _, m in converted_layers(model)]

    # weight_mirror: a mirror step after each iteration, none at the start.
    model = _net("weight_mirror")
    start = angles(model)
    hook = WeightMirrorHook(1, std=1.0, lr=0.3, decay=0.3, initial_steps=0, noise_batch=512)
    _train(model, [hook], iters=12)
    end = angles(model)
    assert min(start) > 60 and max(end) < 20, (start, end)

    # kolen_pollack: the random parts of W and B decay with the weight decay, while both learn
    # the same updates.
    model = _net("kolen_pollack")
    start = angles(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.05)
    trace = []
    for batch in _batches(40):
        opt.zero_grad()
        model(_double(batch)).backward()
        opt.step()
        trace.append(sum(angles(model)) / 4)
    assert min(start) > 60 and trace[19] < 60 and trace[-1] < 10, (start, trace)


def test_build_weight_mirror_hook_from_config(caplog):
    cfg = get_cfg()
    add_bio_config(cfg)
    m = cfg.MODEL.BIO.MIRROR
    assert DEFAULTS == dict(
        period=m.PERIOD, std=m.NOISE_STD, lr=m.LR, decay=m.DECAY, noise_batch=m.NOISE_BATCH,
        samples_per_input=m.SAMPLES_PER_INPUT, initial_steps=m.INITIAL_STEPS,
    )  # fmt: skip
    assert build_weight_mirror_hook(cfg, _net("feedback_alignment")) is None
    assert weight_mirror_hook(_net("kolen_pollack")) is None
    model = _net("weight_mirror")
    hook = build_weight_mirror_hook(cfg, nn.parallel.DataParallel(model))
    assert isinstance(hook, WeightMirrorHook) and hook._model is model
    assert (hook.period, hook.lr, hook.decay) == (m.PERIOD, m.LR, m.DECAY)

    cfg.MODEL.BIO.MIRROR.PERIOD = 0
    cfg.MODEL.BIO.MIRROR.INITIAL_STEPS = 0
    with caplog.at_level(logging.WARNING):
        assert build_weight_mirror_hook(cfg, model) is None
    assert "keep their random B" in caplog.text and "conv1" in caplog.text
    for key, value, message in [
        ("DECAY", 1.5, r"MODEL.BIO.MIRROR.DECAY=1.5: must be a number in \[0, 1\]"),
        ("NOISE_STD", 0.0, "MODEL.BIO.MIRROR.NOISE_STD=0.0: must be a number > 0"),
        ("PERIOD", -1, "MODEL.BIO.MIRROR.PERIOD=-1: must be an integer >= 0"),
        ("SAMPLES_PER_INPUT", 0.0, "MODEL.BIO.MIRROR.SAMPLES_PER_INPUT=0.0: must be a number > 0"),
    ]:
        bad = copy.deepcopy(cfg)
        bad.MODEL.BIO.MIRROR[key] = value
        with pytest.raises(ValueError, match=message):
            build_weight_mirror_hook(bad, model)
    with pytest.raises(TypeError, match="does not learn with the weight_mirror rule"):
        mirror_step(_net("feedback_alignment").fc1, (2, 64), std=1.0, lr=0.1, decay=0.1)
    assert [n for n, _ in mirror_layers(_net("weight_mirror", exclude="fc"))] == ["conv1", "conv2"]

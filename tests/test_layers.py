"""Gradients of converted layers, checked against computations independent of our autograd path."""

import copy
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.grad import conv2d_input, conv2d_weight

import bio_detectron as bd
from bio_detectron.core.rules import feedback_scale

# The rules that send a layer's output gradient through B (direct feedback alignment sends the
# error at the model's outputs instead: tests/test_dfa.py).
RULES = [r for r in bd.available_rules() if not bd.RULE_REGISTRY.get(r).error_feedback]
CONV_VARIANTS = [
    dict(stride=1, padding=1, dilation=1, groups=1, bias=True),
    dict(stride=2, padding=0, dilation=1, groups=1, bias=False),
    dict(stride=1, padding=2, dilation=2, groups=1, bias=True),
    dict(stride=2, padding=1, dilation=1, groups=2, bias=True),
    dict(stride=1, padding=3, dilation=3, groups=4, bias=False),
]


# torch notes, at construction, the input copy that padding='same' with an even kernel needs:
# _small_net builds such a conv on purpose (the conversion pads as torch does).
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")


def _conv_grads(conv, x):
    x = x.detach().clone().requires_grad_()
    y = conv(x)
    g = torch.randn_like(y)
    y.backward(g)
    return x.grad, conv.weight.grad, (conv.bias.grad if conv.bias is not None else None), g


@pytest.mark.parametrize("rule,variant", list(itertools.product(RULES, CONV_VARIANTS)))
def test_conv_gradients_use_feedback_for_input_and_true_gradient_for_weight(rule, variant):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 8, 3, **variant).double()
    bd.convert_model(conv, rule, seed=3)
    x = torch.randn(2, 4, 11, 9, dtype=torch.double)
    gx, gw, gb, g = _conv_grads(conv, x)

    B = conv.feedback_weight()
    args = (variant["stride"], variant["padding"], variant["dilation"], variant["groups"])
    torch.testing.assert_close(gx, conv2d_input(x.shape, B, g, *args))
    torch.testing.assert_close(gw, conv2d_weight(x, conv.weight.shape, g, *args))
    if variant["bias"]:
        torch.testing.assert_close(gb, g.sum((0, 2, 3)))
    if rule != "backprop":
        assert not torch.allclose(B, conv.weight), "feedback must differ from W"


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("leading", [(5,), (2, 3), (2, 3, 4)])
def test_linear_gradients_with_any_leading_dims(rule, leading):
    torch.manual_seed(0)
    fc = nn.Linear(6, 7).double()
    bd.convert_model(fc, rule, seed=3)
    x = torch.randn(*leading, 6, dtype=torch.double, requires_grad=True)
    y = fc(x)
    assert y.shape == (*leading, 7)
    g = torch.randn_like(y)
    y.backward(g)
    torch.testing.assert_close(x.grad, g @ fc.feedback_weight())
    g2, x2 = g.reshape(-1, 7), x.detach().reshape(-1, 6)
    torch.testing.assert_close(fc.weight.grad, g2.t() @ x2)
    torch.testing.assert_close(fc.bias.grad, g2.sum(0))


def _small_net():
    from detectron2.layers import Conv2d as D2Conv2d

    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect"),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        D2Conv2d(
            8, 8, 3, stride=2, padding=1, bias=False, norm=nn.BatchNorm2d(8), activation=F.relu
        ),
        nn.Conv2d(8, 8, 3, padding="same", dilation=2, groups=2),
        nn.Conv2d(8, 8, 4, padding="same"),  # even kernel: asymmetric 'same' padding
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, 5),
    )


def test_backprop_rule_equals_autograd_exactly():
    torch.manual_seed(0)
    ref = _small_net()
    net = bd.convert_model(copy.deepcopy(ref), "backprop")
    assert set(bd.rules_of(net).values()) == {"backprop"}
    x = torch.randn(4, 3, 12, 12)
    for model in (ref, net):
        model(x.clone().requires_grad_()).square().sum().backward()
    for (name, p), q in zip(ref.named_parameters(), net.parameters()):
        assert torch.equal(p.grad, q.grad), name
    torch.testing.assert_close(net(x), ref(x), rtol=0, atol=0)


def test_sign_symmetry_feedback_follows_weight():
    torch.manual_seed(0)
    conv = bd.convert_model(nn.Conv2d(3, 16, 3), "sign_symmetry")
    s = (2.0 / (3 * 3 * 16)) ** 0.5
    torch.testing.assert_close(conv.feedback_weight(), torch.sign(conv.weight) * s)
    with torch.no_grad():
        conv.weight.neg_()
    torch.testing.assert_close(conv.feedback_weight(), torch.sign(conv.weight) * s)
    fc = bd.convert_model(nn.Linear(10, 4), "sign_symmetry")
    torch.testing.assert_close(fc.feedback_weight(), torch.sign(fc.weight) / 10**0.5)
    fc = bd.convert_model(nn.Linear(10, 4), "sign_symmetry", scale="mean_abs")
    torch.testing.assert_close(fc.feedback_weight(), torch.sign(fc.weight) * fc.weight.abs().mean())
    fc = bd.convert_model(nn.Linear(10, 4), "sign_symmetry", scale=0.5)
    torch.testing.assert_close(fc.feedback_weight(), torch.sign(fc.weight) * 0.5)


def test_rms_scale_gives_feedback_the_norm_of_the_weight():
    torch.manual_seed(0)
    conv = bd.convert_model(nn.Conv2d(3, 16, 3), "sign_symmetry", scale="rms")
    with torch.no_grad():
        conv.weight.mul_(torch.rand_like(conv.weight) * 3)  # not one size: rms != mean |W|
    w = conv.weight.detach().double()
    rms = (w**2).sum().sqrt() / w.numel() ** 0.5
    torch.testing.assert_close(conv.feedback_weight().double(), torch.sign(w) * rms)
    assert torch.linalg.vector_norm(conv.feedback_weight()).item() == pytest.approx(
        torch.linalg.vector_norm(w).item(), rel=1e-5
    )
    assert rms.item() > 1.1 * w.abs().mean().item()
    # The input gradient goes through sign(W) * rms: the transposed conv with that weight.
    x = torch.randn(2, 3, 9, 9, requires_grad=True)
    g = torch.randn(2, 16, 7, 7)
    conv(x).backward(g)
    expected = torch.nn.grad.conv2d_input(x.shape, (torch.sign(w) * rms).float(), g)
    torch.testing.assert_close(x.grad, expected)
    fa = bd.convert_model(nn.Linear(400, 300), "feedback_alignment", scale="rms")
    assert fa.feedback.std().item() == pytest.approx(
        fa.weight.detach().pow(2).mean().sqrt().item(), rel=0.02
    )


def test_fixed_rules_formulas():
    torch.manual_seed(0)
    w0 = nn.Conv2d(8, 16, 3)
    s = feedback_scale("kaiming", w0.weight)
    fa = bd.convert_model(copy.deepcopy(w0), "feedback_alignment")
    assert abs(fa.feedback.std().item() / s - 1) < 0.1  # N(0, s^2) over 1152 entries
    signed = bd.convert_model(copy.deepcopy(w0), "feedback_alignment_signed_init")
    torch.testing.assert_close(signed.feedback, torch.sign(w0.weight.detach()) * s)
    rm = bd.convert_model(copy.deepcopy(w0), "sign_symmetry_random_magnitude")
    B = rm.feedback_weight()
    assert torch.equal(torch.sign(B), torch.sign(rm.weight))
    assert B.abs().std() > 0.3 * B.abs().mean()  # magnitudes are random, not constant


@pytest.mark.parametrize(
    "rule",
    ["feedback_alignment", "feedback_alignment_signed_init", "sign_symmetry_random_magnitude"],
)
def test_fixed_feedback_is_a_buffer_unchanged_by_training_and_saved(rule):
    torch.manual_seed(0)
    net = bd.convert_model(_small_net(), rule, seed=7)
    assert all("feedback" not in n for n, _ in net.named_parameters())
    before = {k: v.clone() for k, v in net.state_dict().items() if k.endswith("feedback")}
    assert len(before) == 5
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    for _ in range(3):
        opt.zero_grad()
        net(torch.randn(4, 3, 12, 12)).square().sum().backward()
        opt.step()
    after = {k: v for k, v in net.state_dict().items() if k.endswith("feedback")}
    for k in before:
        assert torch.equal(before[k], after[k]), k
    # A state_dict round trip restores B into a model converted with another seed.
    other = bd.convert_model(_small_net(), rule, seed=8)
    assert not torch.equal(other[0].feedback, net[0].feedback)
    other.load_state_dict(net.state_dict())
    assert torch.equal(other[0].feedback, net[0].feedback)


def test_fixed_feedback_depends_on_seed_and_name_only():
    a = bd.convert_model(_small_net(), "feedback_alignment", seed=1)
    b = bd.convert_model(_small_net(), "feedback_alignment", seed=1, exclude=r"^0$")
    c = bd.convert_model(_small_net(), "feedback_alignment", seed=2)
    assert torch.equal(a[4].feedback, b[4].feedback)  # same in every process, any order
    assert not torch.equal(a[4].feedback, c[4].feedback)
    assert bd.rules_of(b)["0"] == "none"


def test_stock_checkpoint_loads_strictly_into_converted_model():
    ref = _small_net()
    net = bd.convert_model(copy.deepcopy(ref), "feedback_alignment")
    B = net[0].feedback.clone()
    net.load_state_dict(ref.state_dict(), strict=True)
    assert torch.equal(net[0].feedback, B)
    assert set(net.state_dict()) - set(ref.state_dict()) == {
        f"{i}.feedback" for i in (0, 3, 4, 5, 8)
    }


def test_reconversion_changes_rule_and_feedback():
    net = bd.convert_model(_small_net(), "feedback_alignment")
    bd.convert_model(net, "sign_symmetry", include=r"^[03]$")
    assert bd.rules_of(net)["0"] == "sign_symmetry"
    assert "feedback" not in dict(net[0].named_buffers())
    assert net[4].rule == "feedback_alignment"


def test_converted_model_deepcopies_and_pickles(tmp_path):
    net = bd.convert_model(_small_net(), "feedback_alignment")
    clone = copy.deepcopy(net)
    assert torch.equal(clone[0].feedback, net[0].feedback) and clone[3].rule == net[3].rule
    torch.save(net, tmp_path / "net.pt")
    loaded = torch.load(tmp_path / "net.pt", weights_only=False)
    assert loaded[8].rule == "feedback_alignment"


def test_cpu_autocast_backprop_matches_native():
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4))
    net = bd.convert_model(copy.deepcopy(ref), "backprop")
    x = torch.randn(2, 3, 8, 8)
    outs = []
    for model in (ref, net):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = model(x)
        assert y.dtype == torch.bfloat16
        y.float().sum().backward()
        outs.append(y)
    torch.testing.assert_close(outs[0], outs[1])
    for p, q in zip(ref.parameters(), net.parameters()):
        assert q.grad.dtype == torch.float32
        torch.testing.assert_close(p.grad, q.grad)


def test_feedback_conv2d_constructed_directly():
    conv = bd.FeedbackConv2d(3, 4, 3, rule="sign_symmetry", rule_options={"scale": "mean_abs"})
    assert conv.rule == "sign_symmetry" and isinstance(conv, nn.Conv2d)
    assert conv(torch.randn(1, 3, 5, 5)).shape == (1, 4, 3, 3)
    fc = bd.FeedbackLinear(3, 4, rule="feedback_alignment", seed=1)
    assert fc.feedback.shape == fc.weight.shape


# --- Every convolution, one path ----------------------------------------------------------------

# (module class, functional op of the same kind, input spatial shape, options)
CONV_KINDS = [
    (nn.Conv1d, F.conv1d, (13,), dict(stride=2, padding=1, dilation=1, groups=2)),
    (nn.Conv1d, F.conv1d, (13,), dict(stride=1, padding=2, dilation=2, groups=1, bias=False)),
    (nn.Conv3d, F.conv3d, (5, 6, 7), dict(stride=(1, 2, 1), padding=1, dilation=1, groups=2)),
    (nn.Conv3d, F.conv3d, (5, 6, 7), dict(stride=1, padding=(0, 1, 2), dilation=(1, 1, 2))),
    (nn.ConvTranspose1d, F.conv_transpose1d, (9,), dict(stride=2, padding=1, output_padding=1)),
    (nn.ConvTranspose2d, F.conv_transpose2d, (5, 6), dict(stride=2, padding=0)),
    (
        nn.ConvTranspose2d,
        F.conv_transpose2d,
        (5, 6),
        dict(stride=(2, 3), padding=1, output_padding=(1, 2), dilation=1, groups=2, bias=False),
    ),
    (nn.ConvTranspose2d, F.conv_transpose2d, (5, 6), dict(stride=1, padding=2, dilation=2)),
    (
        nn.ConvTranspose3d,
        F.conv_transpose3d,
        (3, 4, 5),
        dict(stride=2, padding=1, output_padding=1, groups=2),
    ),
]


def _functional_args(conv):
    transposed = isinstance(conv, nn.modules.conv._ConvTransposeNd)
    kw = dict(stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=conv.groups)
    if transposed:
        kw["output_padding"] = conv.output_padding
    return kw


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize(
    "kind", range(len(CONV_KINDS)), ids=lambda i: CONV_KINDS[i][0].__name__ + str(i)
)
def test_every_conv_kind_uses_feedback_for_input_and_true_gradient_for_weight(rule, kind):
    cls, op, spatial, options = CONV_KINDS[kind]
    torch.manual_seed(0)
    conv = cls(4, 6, 3, **options).double()
    ref = copy.deepcopy(conv)
    bd.convert_model(conv, rule, seed=3)
    assert bd.rules_of(conv) == {"": rule}
    x = torch.randn(2, 4, *spatial, dtype=torch.double)
    x1 = x.clone().requires_grad_()
    y = conv(x1)
    g = torch.randn_like(y)
    y.backward(g)
    B = conv.feedback_weight().detach().clone()  # for backprop, B is W itself
    kw = _functional_args(ref)
    # Independent reference: native autograd of the functional op, B as the weight for the input
    # gradient, W for the weight and bias gradients.
    torch.testing.assert_close(y, op(x, ref.weight, ref.bias, **kw))
    x2 = x.clone().requires_grad_()
    op(x2, B, None, **kw).backward(g)
    torch.testing.assert_close(x1.grad, x2.grad)
    op(x, ref.weight, ref.bias, **kw).backward(g)
    torch.testing.assert_close(conv.weight.grad, ref.weight.grad)
    if ref.bias is not None:
        torch.testing.assert_close(conv.bias.grad, ref.bias.grad)
    if rule != "backprop":
        assert not torch.allclose(B, conv.weight), "feedback must differ from W"


def test_transposed_conv_output_size_argument():
    torch.manual_seed(0)
    ref = nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1)
    conv = bd.convert_model(copy.deepcopy(ref), "sign_symmetry")
    x = torch.randn(1, 3, 4, 4, requires_grad=True)
    y = conv(x, output_size=[8, 8])
    assert y.shape == (1, 2, 8, 8)
    torch.testing.assert_close(y, ref(x, output_size=[8, 8]))


def test_kaiming_scale_of_any_conv_is_fan_out_of_its_weight():
    for layer in (nn.Conv1d(4, 6, 3), nn.Conv3d(4, 6, (1, 2, 3)), nn.ConvTranspose2d(4, 6, 2)):
        w = layer.weight
        s = feedback_scale("kaiming", w)
        assert s == pytest.approx((2.0 / (w.shape[0] * math.prod(w.shape[2:]))) ** 0.5)
    assert feedback_scale("kaiming", nn.Conv2d(3, 16, 3).weight) == pytest.approx(
        (2 / (9 * 16)) ** 0.5
    )


# --- No gradient needed: the stock forward --------------------------------------------------


def _stock_and_converted(rule="sign_symmetry"):
    torch.manual_seed(0)
    ref = _small_net().eval()
    return ref, bd.convert_model(copy.deepcopy(ref), rule).eval()


@pytest.mark.parametrize("context", ["no_grad", "inference_mode", "frozen"])
def test_no_gradient_needed_runs_the_stock_forward(context, monkeypatch):
    ref, net = _stock_and_converted()
    x = torch.randn(2, 3, 12, 12)
    applied = []
    from bio_detectron.core import layers

    for fn in (layers._FeedbackConvFunction, layers._FeedbackLinearFunction):
        monkeypatch.setattr(fn, "apply", lambda *a, _f=fn.apply: applied.append(1) or _f(*a))
    if context == "frozen":
        for p in list(ref.parameters()) + list(net.parameters()):
            p.requires_grad_(False)
        y, y_ref = net(x), ref(x)
    else:
        ctx = torch.no_grad if context == "no_grad" else torch.inference_mode
        with ctx():
            y, y_ref = net(x), ref(x)
    assert applied == [] and y.grad_fn is None
    assert torch.equal(y, y_ref)
    net(x.requires_grad_()).sum()  # a gradient is needed: the rule's path
    assert len(applied) == 5


def test_jit_trace_of_converted_model_is_the_stock_graph():
    ref, net = _stock_and_converted()
    x = torch.randn(2, 3, 12, 12)
    traced = torch.jit.trace(net, x)
    assert "PythonOp" not in str(traced.graph)
    assert torch.equal(traced(x), ref(x))


# --- Saved and shown ------------------------------------------------------------------------


@pytest.mark.parametrize("rule", RULES)
def test_every_rule_has_a_repr_and_a_tag(rule):
    r = bd.build_rule(rule)
    assert repr(r).startswith(type(r).__name__ + "(")
    assert r.tag().startswith(rule + "(")
    if rule != "backprop":
        assert repr(bd.build_rule(rule, scale="mean_abs")).endswith("(scale='mean_abs')")


@pytest.mark.slow
def test_pickled_converted_detectron2_model_loads_in_a_fresh_process(tmp_path):
    import subprocess
    import sys

    net = bd.convert_model(_small_net(), "feedback_alignment", seed=4)
    x = torch.randn(2, 3, 12, 12)
    path = tmp_path / "net.pt"
    torch.save({"net": net, "x": x, "y": net.eval()(x)}, path)
    code = (
        "import sys, torch; d = torch.load(sys.argv[1], weights_only=False); net = d['net'];"
        "assert type(net[3]).__name__.startswith('Feedback');"
        "assert net[3].rule == 'feedback_alignment';"
        "assert torch.equal(net(d['x']), d['y']);"
        "net.train(); net(d['x'].requires_grad_()).sum().backward();"
        "print(type(net[3]).__mro__[1].__module__, net[3].feedback.shape)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "torch.Size([8, 8, 3, 3])" in proc.stdout

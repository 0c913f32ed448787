"""
nn.MultiheadAttention converted like any layer: stock outputs, stock gradients under backprop,
the rules' gradients against attention written out by hand, whole transformers with every rule,
state dicts, revert, pickling and torch.compile.
"""

import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bio_detectron as bd
from bio_detectron.core.attention import AttentionProjection
from bio_detectron.core.convert import find_unsupported

pytestmark = pytest.mark.usefixtures("one_thread")

E, HEADS = 8, 2


def _pair(seed=0, **options):
    torch.manual_seed(seed)
    stock = nn.MultiheadAttention(E, HEADS, **options).double()
    return stock, copy.deepcopy(stock)


def _inputs(form, batch_first, kdim=E, vdim=E, unbatched=False):
    """query, key, value: self-attention (one tensor), key is value, or three tensors."""
    g = torch.Generator().manual_seed(1)

    def t(length, dim):
        shape = (
            (length, dim) if unbatched else ((3, length, dim) if batch_first else (length, 3, dim))
        )
        return torch.randn(shape, generator=g, dtype=torch.double, requires_grad=True)

    q = t(4, E)
    if form == "self":
        return q, q, q
    k = t(5, kdim)
    return (q, k, k) if form == "kv" else (q, k, t(5, vdim))


OPTIONS = [
    dict(),
    dict(batch_first=True),
    dict(bias=False),
    dict(add_bias_kv=True, add_zero_attn=True),
    dict(kdim=6, vdim=5),
    dict(kdim=6, vdim=6, batch_first=True, bias=False),
    dict(dropout=0.3),
]
CALLS = [
    dict(),
    dict(need_weights=False),
    dict(need_weights=True, average_attn_weights=False),
    dict(masks=True),
    dict(masks=True, need_weights=False),
    dict(causal=True),
]


def _call(module, q, k, v, call):
    kwargs = {key: call[key] for key in ("need_weights", "average_attn_weights") if key in call}
    seq = 1 if q.dim() == 3 and module.batch_first else 0
    L, S = q.shape[seq], k.shape[seq]
    if call.get("masks"):
        kwargs["attn_mask"] = torch.triu(torch.ones(L, S, dtype=torch.bool), 1)
        if q.dim() == 3:
            pad = torch.zeros(3, S, dtype=torch.bool)
            pad[1, -1] = True
            kwargs["key_padding_mask"] = pad
    if call.get("causal"):
        kwargs["attn_mask"] = nn.Transformer.generate_square_subsequent_mask(L, dtype=q.dtype)
        kwargs["is_causal"] = True
        kwargs["need_weights"] = False
    return module(q, k, v, **kwargs)


def _grads(outputs, tensors):
    out, weights = outputs
    loss = (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum()
    if weights is not None:
        loss = loss + weights.pow(2).sum()
    return torch.autograd.grad(loss, tensors, allow_unused=True)


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(o) or "default")
@pytest.mark.parametrize("form", ["self", "kv", "qkv"])
def test_backprop_outputs_and_gradients_equal_stock(options, form):
    stock, converted = _pair(**options)
    bd.convert_model(converted, "backprop")
    kdim, vdim = options.get("kdim", E), options.get("vdim", E)
    if form == "self" and (kdim, vdim) != (E, E):
        form = "kv"  # the key and value have dimensions of their own
    if form == "kv" and kdim != vdim:
        form = "qkv"
    for call in CALLS:
        if call.get("causal") and form != "self":
            continue
        q, k, v = _inputs(form, options.get("batch_first", False), kdim, vdim)
        results = []
        for module in (stock, converted):
            torch.manual_seed(5)  # the same dropout masks
            outputs = _call(module, q, k, v, call)
            params = [p for _, p in module.named_parameters() if not _.endswith("feedback")]
            results.append((outputs, _grads(outputs, [q, k, v, *params])))
        (out_s, w_s), grads_s = results[0]
        (out_c, w_c), grads_c = results[1]
        torch.testing.assert_close(out_c, out_s, rtol=0, atol=1e-12)
        if w_s is not None:
            torch.testing.assert_close(w_c, w_s, rtol=0, atol=1e-12)
        for a, b in zip(grads_c, grads_s):
            if b is None:
                assert a is None
            else:
                torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_unbatched_input_and_eval_mode_equal_stock():
    stock, converted = _pair(dropout=0.5)
    bd.convert_model(converted, "feedback_alignment")
    for form in ("self", "kv", "qkv"):
        q, k, v = _inputs(form, False, unbatched=True)
        outputs = []
        for module in (stock, converted):
            torch.manual_seed(5)  # the same dropout masks
            outputs.append(module(q, k, v)[0])
        torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=1e-12)
    stock.eval(), converted.eval()
    q, k, v = _inputs("self", False)
    with torch.no_grad():  # the stock fast path
        torch.testing.assert_close(converted(q, k, v)[0], stock(q, k, v)[0], rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# The rules against attention written out by hand
# ----------------------------------------------------------------------------------------------
def _linear_with_feedback(x, w, b, feedback):
    """x W^T + b whose input gradient is g B and weight gradient g^T x (no autograd.Function)."""
    through_b = x @ feedback.t()
    y = x.detach() @ w.t() + through_b - through_b.detach()
    return y if b is None else y + b


def _projection_weights(m):
    """(W, bias) of the q, k and v projections of ``m``, packed or separate."""
    if m._qkv_same_embed_dim:
        w_q, w_k, w_v = m.in_proj_weight.chunk(3)
    else:
        w_q, w_k, w_v = m.q_proj_weight, m.k_proj_weight, m.v_proj_weight
    bias_q, bias_k, bias_v = m.in_proj_bias.chunk(3) if m.in_proj_bias is not None else (None,) * 3
    return (w_q, bias_q), (w_k, bias_k), (w_v, bias_v)


def _reference(m, q, k, v, b_q, b_k, b_v, b_out, mask):
    """The attention of ``m`` (sequence first, batched, packed or separate weights) by hand."""
    (w_q, bias_q), (w_k, bias_k), (w_v, bias_v) = _projection_weights(m)
    qp = _linear_with_feedback(q, w_q, bias_q, b_q)
    kp = _linear_with_feedback(k, w_k, bias_k, b_k)
    vp = _linear_with_feedback(v, w_v, bias_v, b_v)
    merged = _attended(qp, kp, vp, mask)
    return _linear_with_feedback(merged, m.out_proj.weight, m.out_proj.bias, b_out)


def _attended(qp, kp, vp, mask):
    """The products of activations inside attention: the projected query (L, N, E), key and
    value (S, N, E) to the heads' outputs merged, (L, N, E), before out_proj."""
    (L, N, _), S, d = qp.shape, kp.shape[0], E // HEADS

    def heads(t, length):  # (length, N, E) -> (N, heads, length, d)
        return t.reshape(length, N, HEADS, d).permute(1, 2, 0, 3)

    scores = heads(qp, L) @ heads(kp, S).transpose(-1, -2) / math.sqrt(d)
    scores = scores.masked_fill(mask, float("-inf"))
    attended = scores.softmax(-1) @ heads(vp, S)  # (N, heads, L, d)
    return attended.permute(2, 0, 1, 3).reshape(L, N, E)


def _feedback_weights(m, rule):
    """B of each projection, by hand: sign(W)/sqrt(fan_in), or the feedback tensors."""
    out = m.out_proj
    if m._qkv_same_embed_dim:
        weights = list(m.in_proj_weight.chunk(3))
        feedbacks = m.in_proj.feedback.chunk(3) if rule != "sign_symmetry" else None
    else:
        weights = [m.q_proj_weight, m.k_proj_weight, m.v_proj_weight]
        feedbacks = (
            None
            if rule == "sign_symmetry"
            else [m.q_proj.feedback, m.k_proj.feedback, m.v_proj.feedback]
        )
    if rule == "sign_symmetry":
        return [torch.sign(w.detach()) / math.sqrt(w.shape[1]) for w in [*weights, out.weight]]
    return [f.detach() for f in [*feedbacks, out.feedback]]


@pytest.mark.parametrize("rule", ["sign_symmetry", "feedback_alignment", "kolen_pollack"])
@pytest.mark.parametrize(
    "options,form", [({}, "self"), ({}, "kv"), ({}, "qkv"), ({"kdim": 6, "vdim": 5}, "qkv")]
)
def test_rule_gradients_equal_attention_written_by_hand(rule, options, form):
    _, m = _pair(**options)
    bd.convert_model(m, rule)
    q, k, v = _inputs(form, False, options.get("kdim", E), options.get("vdim", E))
    mask = torch.zeros(4, 5 if form != "self" else 4, dtype=torch.bool)
    mask[1, -1] = True
    params = [p for name, p in m.named_parameters() if not name.endswith("feedback")]
    got_out = m(q, k, v, attn_mask=mask, need_weights=False)[0]
    got = _grads((got_out, None), [q, k, v, *params])
    want_out = _reference(m, q, k, v, *_feedback_weights(m, rule), mask.view(1, 1, *mask.shape))
    want = _grads((want_out, None), [q, k, v, *params])
    torch.testing.assert_close(got_out, want_out, rtol=1e-10, atol=1e-12)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # B differs from W: the input gradients are not backprop's.
    bd.convert_model(m, "backprop")
    exact = _grads((m(q, k, v, attn_mask=mask, need_weights=False)[0], None), [q])
    assert not torch.allclose(exact[0], got[0])
    if rule == "kolen_pollack":  # B's gradient is W's
        bd.convert_model(m, rule)
        out = m(q, k, v, attn_mask=mask, need_weights=False)[0]
        names = [n for n, _ in m.named_parameters()]
        grads = dict(zip(names, _grads((out, None), [p for _, p in m.named_parameters()])))
        torch.testing.assert_close(grads["out_proj.feedback"], grads["out_proj.weight"])
        proj = "in_proj" if m._qkv_same_embed_dim else "k_proj"
        torch.testing.assert_close(grads[f"{proj}.feedback"], grads[f"{proj}_weight"])


# ----------------------------------------------------------------------------------------------
# Whole transformers
# ----------------------------------------------------------------------------------------------
class DetrLike(nn.Module):
    """A small DETR-style encoder-decoder: a conv backbone, a transformer over its positions,
    learned object queries, class and box heads."""

    def __init__(self, d=16, queries=5, classes=3):
        super().__init__()
        self.backbone = nn.Conv2d(3, d, 4, stride=4)
        self.position = nn.Parameter(torch.randn(1, 16, d) * 0.1)
        layer = nn.TransformerEncoderLayer(d, 2, 32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.queries = nn.Embedding(queries, d)
        self.self_attn = nn.MultiheadAttention(d, 2, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(d, 2, batch_first=True)
        self.class_head = nn.Linear(d, classes + 1)
        self.box_head = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, 4))

    def forward(self, images):
        memory = self.backbone(images).flatten(2).transpose(1, 2) + self.position
        memory = self.encoder(memory)
        tgt = self.queries.weight.unsqueeze(0).expand(images.shape[0], -1, -1)
        tgt = tgt + self.self_attn(tgt, tgt, tgt)[0]
        pos_memory = memory + self.position  # keys carry positions, values do not (DETR)
        tgt = tgt + self.cross_attn(tgt, pos_memory, memory)[0]
        return torch.cat([self.class_head(tgt), self.box_head(tgt).sigmoid()], -1)


def _vit():
    from torchvision.models import VisionTransformer

    return VisionTransformer(
        image_size=32,
        patch_size=8,
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        mlp_dim=64,
        num_classes=5,
    )


def _transformer():
    return nn.Transformer(16, 2, 1, 1, 32, dropout=0.0, batch_first=True)


MODELS = {
    "vit": (_vit, lambda: (torch.randn(2, 3, 32, 32),)),
    "transformer": (
        _transformer,
        # source, target, no source mask, a causal target mask
        lambda: (
            torch.randn(2, 6, 16),
            torch.randn(2, 4, 16),
            None,
            nn.Transformer.generate_square_subsequent_mask(4),
        ),
    ),
    "detr": (DetrLike, lambda: (torch.randn(2, 3, 16, 16),)),
}


def _output(model, inputs):
    out = model(*inputs)
    return out.sum() if isinstance(out, torch.Tensor) else out


@pytest.mark.parametrize("rule", bd.available_rules())
@pytest.mark.parametrize("which", sorted(MODELS))
def test_every_rule_converts_vit_transformer_and_detr(which, rule):
    make, inputs = MODELS[which]
    torch.manual_seed(0)
    stock = make()
    model = copy.deepcopy(stock)
    assert find_unsupported(model) == {}
    bd.convert_model(model, rule)
    rules = bd.rules_of(model)
    assert set(rules.values()) == {rule}
    attention = [n for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
    assert attention and all(
        f"{n}.in_proj" in rules and f"{n}.out_proj" in rules for n in attention
    )
    # State-dict keys: the stock ones, and the feedback tensors of the rules that keep one.
    keys, stock_keys = set(model.state_dict()), set(stock.state_dict())
    assert stock_keys <= keys and all(k.endswith(".feedback") for k in keys - stock_keys)
    # Outputs equal stock; gradients reach every parameter.
    x = inputs()
    out = model(*x)
    torch.testing.assert_close(out, stock(*x), rtol=1e-5, atol=1e-6)
    out.square().sum().backward()
    trained = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert trained == []
    assert all(p.grad.isfinite().all() for p in model.parameters())
    # A stock checkpoint loads, and B is made from its weights; revert gives the stock model.
    model.load_state_dict(stock.state_dict(), strict=True)
    bd.revert_model(model)
    assert [type(m) for m in model.modules()] == [type(m) for m in stock.modules()]
    assert set(model.state_dict()) == stock_keys
    # (Direct feedback alignment's error source goes with the rule, from attention modules too.)
    assert not any("_error_source" in vars(m) for m in model.modules())


# ----------------------------------------------------------------------------------------------
# Direct feedback alignment on attention, by hand
# ----------------------------------------------------------------------------------------------
class _Attend(nn.Module):
    """One attention module and a linear output layer on its output, made batch first (the
    error of direct feedback alignment has the batch first)."""

    def __init__(self, **options):
        super().__init__()
        self.attn = nn.MultiheadAttention(E, HEADS, **options)
        self.head = nn.Linear(E, 3)

    def forward(self, q, k, v, mask, need_weights):
        out = self.attn(q, k, v, attn_mask=mask, need_weights=need_weights)[0]
        return self.head(out if self.attn.batch_first else out.transpose(0, 1))


@pytest.mark.parametrize("need_weights", [False, True])
@pytest.mark.parametrize(
    "options,form",
    [
        ({}, "self"),
        ({}, "kv"),
        ({}, "qkv"),
        ({"kdim": 6, "vdim": 5}, "qkv"),
        ({"batch_first": True}, "self"),
        ({"batch_first": True}, "kv"),
        ({"kdim": 6, "vdim": 6, "batch_first": True}, "kv"),
    ],
)
def test_direct_feedback_alignment_gradients_equal_attention_written_by_hand(
    options, form, need_weights
):
    """Each projection is a layer of Nøkland's: its input gets B e (B: (C_in, C_e), used whole
    for every row-slice of in_proj_weight), per query position or, where the positions are not
    the error's (keys, values), their mean at every position times P_e / P_x (queries over keys,
    so that the error's sum over positions is kept); its weight gradient is the true one given
    what reaches its output; QK^T, the softmax and attention times V stay exact."""
    torch.manual_seed(0)
    stock = _Attend(**options).double()
    model = bd.convert_model(copy.deepcopy(stock), "direct_feedback_alignment", seed=2)
    m, head, batch_first = model.attn, model.head, model.attn.batch_first
    q, k, v = _inputs(form, batch_first, options.get("kdim", E), options.get("vdim", E))
    mask = torch.zeros(4, 5 if form != "self" else 4, dtype=torch.bool)
    mask[1, -1] = True
    y = model(q, k, v, mask, need_weights)  # (N, L, 3)
    torch.testing.assert_close(y, stock(q, k, v, mask, need_weights), rtol=0, atol=1e-12)
    e = torch.randn_like(y)  # the error at the output layer
    params = dict(model.named_parameters())
    grads = torch.autograd.grad((y * e).sum(), [q, k, v, *params.values()], allow_unused=True)
    got = dict(zip(["q", "k", "v", *params], grads))

    def as_inputs(t):  # (N, L, C) <-> the inputs' layout, (L, N, C) or batch first
        return t if batch_first else t.transpose(0, 1)

    def sent(feedback, per_query):
        """B e at a projection's input: at each query position, or the mean over the 4 queries
        times P_e / P_x = 4 / 5 at each of the 5 key positions (their sum, divided among them)."""
        p = e @ feedback.T  # (N, L, C_in)
        at_keys = p.mean(1, keepdim=True).expand(-1, 5, -1) * (4 / 5)
        return as_inputs(p if per_query else at_keys)

    if m._qkv_same_embed_dim:
        b_q = b_k = b_v = m.in_proj.feedback
        assert b_q.shape == (E, 3)  # (C_in, C_e), not shaped like in_proj_weight
    else:
        b_q, b_k, b_v = m.q_proj.feedback, m.k_proj.feedback, m.v_proj.feedback
    if form == "self":  # one call on all of in_proj_weight
        want = {"q": sent(b_q, True)}
    elif form == "kv" and m._qkv_same_embed_dim:  # the query's rows, then the key's and value's
        want = {"q": sent(b_q, True), "k": sent(b_k, False)}
    else:  # one call per projection
        want = {"q": sent(b_q, True), "k": sent(b_k, False) + (sent(b_v, False) if v is k else 0)}
        if v is not k:
            want["v"] = sent(b_v, False)

    # The weights: true gradients given what reaches each projection's output.
    (w_q, bias_q), (w_k, bias_k), (w_v, bias_v) = _projection_weights(m)
    qs, ks, vs = (as_inputs(t.detach()).transpose(0, 1) for t in (q, k, v))  # (L, N, C)
    projected = F.linear(qs, w_q, bias_q), F.linear(ks, w_k, bias_k), F.linear(vs, w_v, bias_v)
    merged = _attended(*projected, mask.view(1, 1, *mask.shape)).transpose(0, 1)  # (N, L, E)
    inner = [n for n in params if not n.startswith(("attn.out_proj", "head"))]
    # out_proj's input gets its B e at each query position.
    g_merged = e @ m.out_proj.feedback.T
    want.update(zip(inner, torch.autograd.grad(merged, [params[n] for n in inner], g_merged)))
    merged = merged.detach().flatten(0, 1)
    attended = F.linear(merged, m.out_proj.weight, m.out_proj.bias).detach()
    g_out = (e @ head.feedback.T).flatten(0, 1)  # what the output layer sends down
    want["attn.out_proj.weight"], want["attn.out_proj.bias"] = g_out.T @ merged, g_out.sum(0)
    e = e.flatten(0, 1)
    want["head.weight"], want["head.bias"] = e.T @ attended, e.sum(0)
    assert set(want) == set(got) - ({"k", "v"} if form == "self" else {"v"} if v is k else set())
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, rtol=1e-10, atol=1e-12, msg=name)


def test_direct_feedback_alignment_feedback_of_attention_is_restored_from_a_state_dict():
    torch.manual_seed(0)
    a = bd.convert_model(DetrLike(), "direct_feedback_alignment", seed=3)
    b = bd.convert_model(DetrLike(), "direct_feedback_alignment", seed=4)
    assert a.self_attn.in_proj.feedback.shape == (16, 4)  # (C_in, C_e): box_head.2's outputs
    b.load_state_dict(a.state_dict())
    for name in ("encoder.layers.0.self_attn.in_proj", "cross_attn.in_proj", "cross_attn.out_proj"):
        assert torch.equal(b.get_submodule(name).feedback, a.get_submodule(name).feedback), name
        assert b.get_submodule(name)._feedback_restored
    fresh = bd.convert_model(DetrLike(), "direct_feedback_alignment", seed=4)
    assert not torch.equal(fresh.self_attn.in_proj.feedback, a.self_attn.in_proj.feedback)
    # A deep copy's projections read the copy's error source, through their attention module.
    c = copy.deepcopy(a)
    assert c.self_attn._error_source is c._error_source is not a._error_source
    x = torch.randn(2, 3, 16, 16)
    for model in (a, c):
        model(x).square().sum().backward()
    for p, q in zip(a.parameters(), c.parameters()):
        assert torch.equal(p.grad, q.grad)


def test_out_proj_without_its_attention_module_is_refused():
    model = DetrLike()
    with pytest.raises(ValueError, match="cross_attn.out_proj: MultiheadAttention 'cross_attn'"):
        bd.convert_model(model, "sign_symmetry", exclude=r"cross_attn$")
    bd.convert_model(model, "sign_symmetry", exclude=r"cross_attn")
    rules = bd.rules_of(model)
    assert rules["cross_attn.in_proj"] == rules["cross_attn.out_proj"] == "none"
    assert rules["self_attn.in_proj"] == "sign_symmetry"


class OwnAttention(nn.MultiheadAttention):
    def forward(self, query, key, value, **kwargs):
        return super().forward(query, key, value, **kwargs)


def test_attention_subclass_with_a_forward_of_its_own_is_refused():
    model = nn.Sequential()
    model.add_module("attn", OwnAttention(E, HEADS))
    with pytest.raises(ValueError, match="attn: OwnAttention has a forward of its own"):
        bd.convert_model(model, "feedback_alignment")


def test_feedback_is_checkpointed_with_the_rule_and_made_from_a_stock_checkpoint():
    torch.manual_seed(0)
    model = bd.convert_model(DetrLike(), "feedback_alignment", seed=3)
    state = model.state_dict()
    assert state._metadata["self_attn.in_proj"]["bio_rule"] == "feedback_alignment(scale='kaiming')"
    again = bd.convert_model(DetrLike(), "feedback_alignment", seed=4)
    again.load_state_dict(state)
    torch.testing.assert_close(again.self_attn.in_proj.feedback, model.self_attn.in_proj.feedback)
    assert again.self_attn.in_proj._feedback_restored
    # A stock checkpoint: B made from the loaded weights with the layer's seed.
    stock = DetrLike()
    again.load_state_dict(stock.state_dict())
    fresh = bd.convert_model(copy.deepcopy(stock), "feedback_alignment", seed=4)
    torch.testing.assert_close(again.self_attn.in_proj.feedback, fresh.self_attn.in_proj.feedback)
    assert not torch.equal(fresh.self_attn.in_proj.feedback, model.self_attn.in_proj.feedback)


def test_projection_feedback_is_made_from_the_seed_of_its_own_name():
    from bio_detectron.core.rules import layer_seed

    m = bd.convert_model(nn.MultiheadAttention(E, HEADS, kdim=6, vdim=5), "feedback_alignment")
    for name in ("q_proj", "k_proj", "v_proj"):
        w = getattr(m, f"{name}_weight")
        g = torch.Generator().manual_seed(layer_seed(0, name))
        want = torch.randn(w.shape, generator=g) / math.sqrt(w.shape[1])
        torch.testing.assert_close(getattr(m, name).feedback, want)


def test_pickles_and_deep_copies():
    model = bd.convert_model(DetrLike(), "kolen_pollack")
    x = torch.randn(2, 3, 16, 16)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    for other in (torch.load(buffer, weights_only=False), copy.deepcopy(model)):
        assert other.self_attn.in_proj._bio_owner is other.self_attn
        torch.testing.assert_close(other(x), model(x))
        assert bd.rules_of(other) == bd.rules_of(model)


def test_kolen_pollack_feedback_is_trained_like_the_weight():
    solver = pytest.importorskip("bio_detectron.solver")
    model = bd.convert_model(DetrLike(), "kolen_pollack")
    names = {n for n, _ in model.named_parameters()}
    assert {"self_attn.in_proj.feedback", "cross_attn.out_proj.feedback"} <= names
    optimizer = torch.optim.SGD(
        [
            {"params": [p for n, p in model.named_parameters() if "in_proj" not in n]},
            {"params": [model.self_attn.in_proj_weight, model.cross_attn.in_proj_weight], "lr": 2},
            {
                "params": [
                    p for n, p in model.named_parameters() if "in_proj" in n and "_w" not in n
                ]
            },
        ],
        lr=1,
    )
    with pytest.raises(ValueError, match=r"self_attn.in_proj.feedback \(kolen_pollack\) must be"):
        solver.check_trained_feedback(optimizer, model)
    solver.check_trained_feedback(torch.optim.SGD(model.parameters(), lr=1), model)


def test_weight_mirror_mirrors_the_projections():
    from bio_detectron.core.mirror import InputShapes, mirror_layers, mirror_step

    torch.manual_seed(0)
    model = bd.convert_model(DetrLike(), "weight_mirror")
    layers = dict(mirror_layers(model))
    assert {"self_attn.in_proj", "self_attn.out_proj", "encoder.layers.0.self_attn.in_proj"} <= set(
        layers
    )
    with InputShapes(list(layers.items())) as shapes:
        model(torch.randn(2, 3, 16, 16)).sum().backward()
    # The query's at the first call, sequence first as the stock forward projects it.
    assert shapes.shapes["cross_attn.in_proj"] == (5, 2, 16)
    layer = layers["cross_attn.in_proj"]
    before = F.cosine_similarity(layer.feedback.flatten(), layer.weight.flatten(), 0)
    for step in range(30):
        shape = shapes.shapes["cross_attn.in_proj"]
        mirror_step(layer, shape, std=1, lr=0.1, decay=0.1, samples_per_input=4, step=step)
    after = F.cosine_similarity(layer.feedback.flatten(), layer.weight.flatten(), 0)
    assert abs(before) < 0.3 and after > 0.9


@pytest.mark.parametrize("rule", ["sign_symmetry", "kolen_pollack", "direct_feedback_alignment"])
def test_compiles_without_graph_breaks_and_equals_eager(rule):
    torch.manual_seed(0)
    model = bd.convert_model(DetrLike(), rule)
    x = torch.randn(2, 3, 16, 16)
    # Direct feedback alignment hands the error to its layers through Python state: they run
    # eagerly, between graphs (docs/rules.md), with the same gradients.
    whole = not bd.build_rule(rule).error_feedback
    if whole:
        explained = torch._dynamo.explain(model)(x)
        assert explained.graph_break_count == 0, explained.break_reasons
    compiled = torch.compile(model, backend="aot_eager", fullgraph=whole)
    out = compiled(x)
    grads = torch.autograd.grad(out.square().sum(), list(model.parameters()))
    want_out = model(x)
    want = torch.autograd.grad(want_out.square().sum(), list(model.parameters()))
    torch.testing.assert_close(out, want_out)
    for a, b in zip(grads, want):
        torch.testing.assert_close(a, b)


def test_projection_modules_are_listed_and_revert_cleanly():
    m = bd.convert_model(nn.MultiheadAttention(E, HEADS), "feedback_alignment")
    assert isinstance(m.in_proj, AttentionProjection)
    assert bd.rules_of(m) == {"in_proj": "feedback_alignment", "out_proj": "feedback_alignment"}
    bd.revert_model(m)
    assert type(m) is nn.MultiheadAttention and set(dict(m.named_children())) == {"out_proj"}
    assert bd.rules_of(m) == {"in_proj": "none", "out_proj": "none"}


def test_an_unexpected_linear_call_is_an_error():
    from bio_detectron.core.attention import _dispatches_by_name, _ProjectionCalls

    # What the conversion relies on in torch's attention function (see core/attention.py).
    assert _dispatches_by_name(F.multi_head_attention_forward)
    m = bd.convert_model(nn.MultiheadAttention(E, HEADS), "sign_symmetry")
    with pytest.raises(RuntimeError, match=r"shape \(5, 8\) where in_proj_weight rows"):
        with _ProjectionCalls(m):
            F.linear(torch.randn(2, E), torch.randn(5, E))


def test_alignment_metrics_and_probe_see_the_projections():
    from bio_detectron.core.alignment import gradient_angles, weight_metrics

    torch.manual_seed(0)
    model = bd.convert_model(DetrLike(), "sign_symmetry")
    metrics = weight_metrics(model)
    assert metrics["self_attn.in_proj"]["sign_concordance"] == 1.0
    angles = gradient_angles(model, (torch.randn(2, 3, 16, 16),), loss_fn=lambda y: y.sum())
    # The last layers' input gradients are exact; the projections' weight gradients are not.
    assert 0 < angles["self_attn.in_proj"] < 90 and angles["class_head"] < 1e-3


def test_autocast_output_equals_stock_under_autocast():
    torch.manual_seed(0)
    stock = DetrLike()
    model = bd.convert_model(copy.deepcopy(stock), "feedback_alignment")
    x = torch.randn(2, 3, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, want = model(x), stock(x)
        out.float().square().sum().backward()
    assert out.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    assert model.self_attn.in_proj_weight.grad.dtype == torch.float32

"""Direct feedback alignment: gradients against a reference written here, the error of dense
outputs, B per layer and across checkpoints, processes, and the two training tools."""

import copy
import math
import os
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.grad import conv2d_weight

import bio_detectron as bd
from bio_detectron.core.compile import compile_model
from bio_detectron.core.rules import layer_seed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RULE = "direct_feedback_alignment"

pytestmark = pytest.mark.usefixtures("one_thread")


# --- Classifiers: Nøkland's definition, by hand -------------------------------------------------


def test_mlp_gradients_equal_noklands_by_hand():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 6), nn.Tanh(), nn.Linear(6, 3)
    ).double()
    bd.convert_model(net, RULE, seed=4)
    x, target = torch.randn(8, 5, dtype=torch.double), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    F.cross_entropy(net(x), target).backward()

    # Forward by hand, then e = dL/dy = (softmax(y) - onehot) / N and, for each hidden layer,
    # delta_l = (B e) * f'(a_l), B the feedback of the layer that reads h_l.
    W = [net[i].weight.detach() for i in (0, 2, 4)]
    b = [net[i].bias.detach() for i in (0, 2, 4)]
    h1 = torch.tanh(x @ W[0].T + b[0])
    h2 = torch.tanh(h1 @ W[1].T + b[1])
    y = h2 @ W[2].T + b[2]
    e = (torch.softmax(y, 1) - F.one_hot(target, 3)) / len(x)
    B1, B2 = net[2].feedback, net[4].feedback  # (7, 3), (6, 3): (C_in, C_e)
    assert B1.shape == (7, 3) and B2.shape == (6, 3) and net[0].feedback.shape == (5, 3)
    d2 = (e @ B2.T) * (1 - h2**2)
    d1 = (e @ B1.T) * (1 - h1**2)
    torch.testing.assert_close(net[4].weight.grad, e.T @ h2)  # the output layer: its true e
    torch.testing.assert_close(net[2].weight.grad, d2.T @ h1)
    torch.testing.assert_close(net[0].weight.grad, d1.T @ x)
    torch.testing.assert_close(net[0].bias.grad, d1.sum(0))
    # "kaiming": B ~ N(0, 1/C_e), from the rule's seed and the layer's name alone.
    g = torch.Generator().manual_seed(layer_seed(4, "2"))
    torch.testing.assert_close(B1, torch.randn(7, 3, generator=g).double() / math.sqrt(3))


def test_hidden_layers_learn_xor_from_the_direct_error():
    """With the rule the hidden layers learn what the last layer alone cannot (XOR): the output
    layer's weights come to align with B (Nøkland 2016), as they do under feedback alignment."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 2, generator=g)
    y = ((x[:, 0] > 0) ^ (x[:, 1] > 0)).long()

    def train(rule, hidden_frozen=False):
        torch.manual_seed(0)
        net = nn.Sequential(
            nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 2)
        )
        bd.convert_model(net, rule)
        for i in (0, 2) if hidden_frozen else ():
            net[i].requires_grad_(False)
        opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.5)
        for _ in range(300):
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
        return (net(x).argmax(1) == y).float().mean().item()

    assert train(RULE) > 0.95
    assert train("backprop", hidden_frozen=True) < 0.9  # the last layer alone


def test_conv_net_gradients_equal_a_reference_by_hand():
    """Conv -> BatchNorm -> ReLU -> conv -> ReLU -> average pool -> linear: B_l e divided among
    each conv input's locations (the vector error's sum kept, as through the pool), then exact
    BatchNorm, ReLU and pooling down to the weights."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 5),
    ).double()
    stock = copy.deepcopy(net)
    bd.convert_model(net, RULE, seed=1)
    x = torch.randn(3, 3, 8, 8, dtype=torch.double)
    target = torch.tensor([1, 4, 0])
    F.cross_entropy(net(x), target).backward()

    c1, bn, c2, fc = stock[0], stock[1], stock[3], stock[7]
    a1 = c1(x)
    a1_ = a1.detach().requires_grad_()
    z1 = F.relu(bn(a1_))
    a2 = c2(z1.detach())
    z2 = F.relu(a2)
    p = z2.mean((2, 3))
    y = fc(p)
    e = (torch.softmax(y, 1) - F.one_hot(target, 5)).detach() / len(x)
    g_p = e @ net[7].feedback.T  # the linear layer's input: B_fc e
    g_a2 = (g_p[:, :, None, None] / 16).expand_as(a2) * (a2 > 0)  # pool, ReLU
    # The second conv's input, 8x8: B e times P_e / P_x = 1 / 64 at each location.
    g_z1 = torch.einsum("ic,nc->ni", net[3].feedback, e)[:, :, None, None].expand_as(z1) / 64
    (g_a1,) = torch.autograd.grad(z1, a1_, g_z1)  # BatchNorm and ReLU: exact
    torch.testing.assert_close(net[7].weight.grad, e.T @ p.detach())
    torch.testing.assert_close(
        net[3].weight.grad, conv2d_weight(z1.detach(), c2.weight.shape, g_a2, 2, 1)
    )
    torch.testing.assert_close(net[3].bias.grad, g_a2.sum((0, 2, 3)))
    torch.testing.assert_close(net[0].weight.grad, conv2d_weight(x, c1.weight.shape, g_a1, 1, 1))
    for name, m in net.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            assert m.feedback.shape == (m.weight.shape[1], 5), name  # (C_in, C_e)


# --- Dense outputs ------------------------------------------------------------------------------


class _Detector(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1))
        self.down = nn.Conv2d(4, 4, 3, stride=2, padding=1)
        self.head = _Head()

    def forward(self, x):
        p8 = self.backbone(x)
        return self.head(p8, self.down(p8))


class _Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.cls_score = nn.Conv2d(4, 3, 1)
        self.bbox_pred = nn.Conv2d(4, 2, 1)

    def forward(self, p8, p4):
        return [self.cls_score(p8), self.cls_score(p4)], [self.bbox_pred(p4)]


def test_dense_errors_are_pooled_replicated_and_projected_per_layer():
    torch.manual_seed(0)
    net = _Detector().double()
    bd.convert_model(net, RULE, seed=2, outputs=["head.cls_score", "head.bbox_pred"])
    x = torch.randn(2, 3, 8, 8, dtype=torch.double, requires_grad=True)
    (c8, c4), (b4,) = net(x)
    e_c8, e_c4, e_b4 = (torch.randn_like(t) for t in (c8, c4, b4))
    ((c8 * e_c8).sum() + (c4 * e_c4).sum() + (b4 * e_b4).sum()).backward()

    def project(feedback, size):
        """B e-bar at ``size``: each error projected by its columns, then brought to size with
        its sum over positions kept (times P_e / P_x)."""
        cls, box = feedback[:, :3], feedback[:, 3:]
        maps = [
            (torch.einsum("ic,nchw->nihw", cls, e_c8)),
            (torch.einsum("ic,nchw->nihw", cls, e_c4)),
            (torch.einsum("ic,nchw->nihw", box, e_b4)),
        ]
        out = 0
        for m in maps:
            if m.shape[-1] > size:  # 8 -> 4: the sum of each 2x2 block
                m = m.reshape(*m.shape[:2], 4, 2, 4, 2).sum((3, 5))
            elif m.shape[-1] < size:  # 4 -> 8: each value divided among its 2x2 block
                m = m.repeat_interleave(2, 2).repeat_interleave(2, 3) / 4
            out = out + m
        return out

    # The input's gradient is the first layer's B e-bar at 8x8.
    torch.testing.assert_close(x.grad, project(net.backbone[0].feedback, 8))
    # `down`'s output feeds the two output layers at 4x4: its output gradient is their B e-bar.
    p8 = net.backbone(x).detach()
    g4 = project(net.head.cls_score.feedback, 4) + project(net.head.bbox_pred.feedback, 4)
    torch.testing.assert_close(
        net.down.weight.grad, conv2d_weight(p8, net.down.weight.shape, g4, 2, 1)
    )
    # The output layers' own weight gradients are their true ones, summed over their calls.
    p4 = net.down(p8).detach()
    w = net.head.cls_score.weight.shape
    true = conv2d_weight(p8, w, e_c8, 1, 0) + conv2d_weight(p4, w, e_c4, 1, 0)
    torch.testing.assert_close(net.head.cls_score.weight.grad, true)
    assert net.head.cls_score.feedback.shape == (4, 5) and net.down.feedback.shape == (4, 5)


def test_tokens_and_1d_maps_get_the_error_at_every_position():
    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.conv, self.out = nn.Linear(4, 5), nn.Conv1d(5, 5, 3), nn.Linear(5, 3)

        def forward(self, x):  # (N, T, 4)
            h = self.conv(self.embed(x).transpose(1, 2))  # (N, 5, T - 2)
            return self.out(h.mean(2))

    torch.manual_seed(0)
    net = bd.convert_model(Tokens().double(), RULE, outputs=["out"])
    x = torch.randn(2, 6, 4, dtype=torch.double, requires_grad=True)
    g = torch.randn(2, 3, dtype=torch.double)
    (net(x) * g).sum().backward()
    # The first layer's input gradient: B e divided among the 6 tokens (P_e / P_x = 1 / 6).
    torch.testing.assert_close(x.grad, (g @ net.embed.feedback.T)[:, None].expand(2, 6, 4) / 6)
    # The linear layer's output gradient is the conv's B e divided among the 6 positions of its
    # 1-d map.
    g_embed = (g @ net.conv.feedback.T)[:, None].expand(2, 6, 5) / 6
    torch.testing.assert_close(
        net.embed.weight.grad, g_embed.reshape(-1, 5).T @ x.detach().reshape(-1, 4)
    )


def test_a_token_map_under_an_error_map_gets_it_at_its_own_positions():
    """A linear layer on (N, H, W, C) tokens (a ViT backbone under a detector's maps) gets the
    error maps pooled or replicated to its H x W positions, as a convolution would, their sums
    over positions kept."""

    class TokenMap(nn.Module):
        def __init__(self):
            super().__init__()
            self.tokens = nn.Linear(4, 5)
            self.fine, self.coarse = nn.Conv2d(5, 3, 1), nn.Conv2d(5, 3, 1)

        def forward(self, x):  # (N, 4, 4, 4) channels last
            h = self.tokens(x).permute(0, 3, 1, 2)  # (N, 5, 4, 4)
            up = F.interpolate(h, scale_factor=2.0)
            return [self.fine(up), self.coarse(F.avg_pool2d(h, 2))]  # 8x8 and 2x2 maps

    torch.manual_seed(0)
    net = bd.convert_model(TokenMap().double(), RULE, outputs=["fine", "coarse"])
    x = torch.randn(2, 4, 4, 4, dtype=torch.double, requires_grad=True)
    e_fine, e_coarse = torch.randn(2, 3, 8, 8).double(), torch.randn(2, 3, 2, 2).double()
    fine, coarse = net(x)
    ((fine * e_fine).sum() + (coarse * e_coarse).sum()).backward()
    b = net.tokens.feedback  # (4, 6): the columns of fine's 3 channels, then coarse's
    # 8x8 -> 4x4: the sum of each 2x2 block; 2x2 -> 4x4: each value divided among its block.
    fine_at_4x4 = e_fine.reshape(2, 3, 4, 2, 4, 2).sum((3, 5))
    coarse_at_4x4 = e_coarse.repeat_interleave(2, 2).repeat_interleave(2, 3) / 4
    at_4x4 = torch.einsum("ic,nchw->nihw", b[:, :3], fine_at_4x4)
    at_4x4 = at_4x4 + torch.einsum("ic,nchw->nihw", b[:, 3:], coarse_at_4x4)
    torch.testing.assert_close(x.grad, at_4x4.permute(0, 2, 3, 1))


def test_a_linear_output_layers_error_over_queries_stays_at_each_query():
    """A linear output layer on queries (N, Q, C_o), as DETR's heads: a linear layer on the same
    Q queries gets its B e at each query; one on other positions, and a convolution at every
    location, get the sum over the queries divided among their positions."""

    class Queries(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.memory = nn.Linear(4, 4)  # on the 16 locations of the map
            self.queries = nn.Parameter(torch.randn(5, 4))
            self.mix = nn.Linear(4, 4)  # on the 5 queries
            self.out = nn.Linear(4, 3)

        def forward(self, x):  # (N, 3, 4, 4)
            memory = self.memory(self.conv(x).flatten(2).transpose(1, 2))  # (N, 16, 4)
            return self.out(self.mix(self.queries + memory.mean(1, keepdim=True)))  # (N, 5, 3)

    torch.manual_seed(0)
    net = bd.convert_model(Queries().double(), RULE, outputs=["out"])
    x = torch.randn(2, 3, 4, 4, dtype=torch.double, requires_grad=True)
    e = torch.randn(2, 5, 3, dtype=torch.double)
    (net(x) * e).sum().backward()

    def sent(layer):  # B e at each query, (N, 5, C_in)
        return e @ layer.feedback.T

    assert net.mix.feedback.shape == (4, 3)
    tokens = net.queries + net.memory(net.conv(x).flatten(2).transpose(1, 2)).mean(1, True)
    tokens = tokens.detach()
    torch.testing.assert_close(net.queries.grad, sent(net.mix).sum(0))
    g_mix = sent(net.out).flatten(0, 1)  # what the output layer sends down, per query
    torch.testing.assert_close(net.mix.weight.grad, g_mix.T @ tokens.flatten(0, 1))
    # memory's output reaches the queries through their mean: exact, 1/16 per location.
    g_memory = (sent(net.mix).sum(1, keepdim=True) / 16).expand(2, 16, 4)
    memory_in = net.conv(x).flatten(2).transpose(1, 2).detach()
    torch.testing.assert_close(
        net.memory.weight.grad, g_memory.flatten(0, 1).T @ memory_in.flatten(0, 1)
    )
    # memory's input: 16 locations, not the queries: the mean over the 5 queries times
    # P_e / P_x = 5 / 16 at each (their sum, divided among the locations).
    g_conv = (sent(net.memory).mean(1, keepdim=True) * 5 / 16).expand(2, 16, 4)
    g_conv = g_conv.transpose(1, 2).reshape(2, 4, 4, 4)
    torch.testing.assert_close(
        net.conv.weight.grad, conv2d_weight(x.detach(), net.conv.weight.shape, g_conv, 1, 1)
    )
    # A convolution's input: the same, the 5 queries' sum divided among its 16 locations.
    want = (sent(net.conv).mean(1) * 5 / 16)[:, :, None, None].expand(2, 3, 4, 4)
    torch.testing.assert_close(x.grad, want)


def test_the_errors_sum_over_positions_is_kept_at_every_resolution():
    """Brought to a layer input's positions, each error keeps its sum over positions, as backprop
    keeps it through average pooling, strides and a global pool: a finer map is summed over the
    blocks it pools, a coarser map or a vector divided among the positions it covers. (Else a
    fine layer's weight gradient, a sum over its many positions, would grow with their number.)"""

    class TwoScales(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = nn.Conv2d(3, 4, 3, padding=1)
            self.down = nn.Conv2d(4, 4, 4, stride=4)
            self.fine, self.coarse = nn.Conv2d(4, 3, 1), nn.Conv2d(4, 2, 1)

        def forward(self, x):  # (N, 3, 8, 8)
            h = self.backbone(x)
            return [self.fine(F.interpolate(h, scale_factor=2.0)), self.coarse(self.down(h))]

    torch.manual_seed(0)
    net = bd.convert_model(TwoScales().double(), RULE, outputs=["fine", "coarse"])
    x = torch.randn(2, 3, 8, 8, dtype=torch.double, requires_grad=True)
    fine, coarse = net(x)  # 16x16 and 2x2 maps over the 8x8 input
    e_fine, e_coarse = torch.randn_like(fine), torch.randn_like(coarse)
    ((fine * e_fine).sum() + (coarse * e_coarse).sum()).backward()
    b = net.backbone.feedback  # (3, 5): fine's 3 columns, then coarse's 2
    mass = e_fine.sum((2, 3)) @ b[:, :3].T + e_coarse.sum((2, 3)) @ b[:, 3:].T
    torch.testing.assert_close(x.grad.sum((2, 3)), mass)

    # A vector error over an H x W map: B e / (H W) at each of its positions.
    class Pooled(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.out = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 3)

        def forward(self, x):
            return self.out(self.conv(x).mean((2, 3)))

    net = bd.convert_model(Pooled().double(), RULE, outputs=["out"])
    x = torch.randn(2, 3, 5, 6, dtype=torch.double, requires_grad=True)
    e = torch.randn(2, 3, dtype=torch.double)
    (net(x) * e).sum().backward()
    each = (e @ net.conv.feedback.T / (5 * 6))[:, :, None, None].expand(2, 3, 5, 6)
    torch.testing.assert_close(x.grad, each)


def test_outputs_must_be_returned_by_their_common_module():
    class Reshaping(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 2), nn.Linear(3, 2)

        def forward(self, x):
            return self.a(x) + self.b(x)  # neither output leaves the module as it is

    net = bd.convert_model(Reshaping(), RULE, outputs=["a", "b"])
    with pytest.raises(RuntimeError, match=r"\['a', 'b'\].*does not return them"):
        net(torch.randn(2, 3))


def test_a_layer_without_an_error_source_is_an_error():
    with pytest.raises(RuntimeError, match="needs the error at its model's outputs"):
        bd.FeedbackLinear(3, 2, rule=RULE)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"\['1'\] are not convolutions or nn.Linear"):
        bd.convert_model(net, RULE, outputs=["1"])
    with pytest.raises(ValueError, match=r"not found: \['head'\]"):
        bd.convert_model(net, RULE, outputs=["head"])


def test_several_forward_passes_each_use_their_own_error():
    torch.manual_seed(0)
    net = bd.convert_model(nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 3)), RULE)
    x1, x2 = torch.randn(2, 4), torch.randn(2, 4)
    y1, y2 = net(x1), net(x2)
    g = torch.randn(2, 3)
    (y1 * g).sum().backward()
    torch.testing.assert_close(net[0].weight.grad, (g @ net[1].feedback.T).T @ x1)
    net.zero_grad()
    (y2 * 0).sum().backward()
    assert net[0].weight.grad.abs().sum() == 0


def test_under_torch_compile_the_rule_runs_eagerly_with_the_same_gradients():
    torch.manual_seed(0)
    net = bd.convert_model(nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)), RULE)
    ref, x = copy.deepcopy(net), torch.randn(5, 4)
    torch.compile(net, backend="aot_eager")(x).square().sum().backward()
    ref(x).square().sum().backward()  # (a deep copy records its errors in its own source)
    for p, q in zip(net.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad)


def test_compile_model_names_the_layers_that_run_eagerly():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    bd.convert_model(net, RULE, include=[r"^0$"])
    bd.convert_model(net, "sign_symmetry", include=[r"^2$"])
    with pytest.warns(UserWarning, match=r"1 converted layer\(s\) .* eagerly .*: 0\."):
        compile_model(net, backend="aot_eager")
    other = bd.convert_model(nn.Sequential(nn.Linear(4, 3)), "sign_symmetry")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compile_model(other, backend="aot_eager")


def test_an_output_changed_in_place_afterwards():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 3), nn.ReLU(inplace=True))
    bd.convert_model(net, RULE, outputs=["1"])
    x = torch.randn(6, 4)
    y = net(x)
    g = torch.randn_like(y)
    (y * g).sum().backward()
    e = g * (y > 0)  # the error at the output layer's output, before the in-place ReLU
    torch.testing.assert_close(net[0].weight.grad, (e @ net[1].feedback.T).T @ x)


# --- B: per layer, checkpoints, reverting -------------------------------------------------------


def test_feedback_follows_seed_and_name_and_is_restored_from_a_state_dict():
    torch.manual_seed(0)
    make = lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 5, 1))  # noqa: E731
    a = bd.convert_model(make(), RULE, seed=3)
    b = bd.convert_model(make(), RULE, seed=3)
    c = bd.convert_model(make(), RULE, seed=4)
    assert torch.equal(a[2].feedback, b[2].feedback) and not torch.equal(
        a[2].feedback, c[2].feedback
    )
    state = a.state_dict()
    assert state._metadata["2"]["bio_rule"] == "direct_feedback_alignment(scale='kaiming')"
    c.load_state_dict(state)
    assert torch.equal(c[2].feedback, a[2].feedback) and c[2]._feedback_restored
    # Reverting removes the error source's hooks with the rule.
    bd.revert_model(a)
    assert not any(m._forward_hooks for m in a.modules()) and "feedback" not in a.state_dict()
    # So does converting every layer to another rule.
    bd.convert_model(b, "feedback_alignment")
    assert not any(m._forward_hooks for m in b.modules()) and "_error_source" not in vars(b)


def test_alignment_metrics_have_gradient_angles_and_no_weight_angles():
    from bio_detectron.core.alignment import alignment_metrics

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    bd.convert_model(net, RULE)
    x = torch.randn(5, 4)
    metrics = alignment_metrics(net, (x,), loss_fn=lambda y: y.square().sum())
    # B maps the output error, not this layer's output: it has no W to be compared with.
    assert math.isnan(metrics["0"]["weight_angle"]) and math.isnan(metrics["all"]["weight_angle"])
    # The last layer's gradient is its true one; the first's is e's through B of the second.
    assert metrics["2"]["grad_angle"] == pytest.approx(0, abs=1e-5)
    assert 0 < metrics["0"]["grad_angle"] < 180


def test_a_pickled_model_trains_with_its_own_error_source():
    import io

    torch.manual_seed(0)
    net = bd.convert_model(nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)), RULE)
    buffer = io.BytesIO()
    torch.save(net, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert loaded._error_source is loaded[0]._error_source is not net._error_source
    x = torch.randn(5, 4)
    for model in (net, loaded):
        model(x).square().sum().backward()
    for p, q in zip(net.parameters(), loaded.parameters()):
        assert torch.equal(p.grad, q.grad)


# --- Detectors: RetinaNet by parts --------------------------------------------------------------


def _retinanet(*opts):
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    cfg = get_cfg()
    bd.add_bio_config(cfg)
    cfg.merge_from_file(
        os.path.join(
            REPO, "configs/quick_schedules/retinanet_R_18_FPN_sign_symmetry_instant_test.yaml"
        )
    )
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", *opts])
    return cfg, build_model(cfg)


@pytest.mark.slow
def test_retinanet_dfa_in_head_and_fpn_with_feedback_alignment_in_the_backbone():
    from detectron2.data import DatasetCatalog, DatasetMapper
    from detectron2.utils.events import EventStorage

    cfg, model = _retinanet(
        "MODEL.BIO.RULE", RULE, "MODEL.BIO.PARTS.BACKBONE", "feedback_alignment",
        "MODEL.BIO.PARTS.PREDICTOR", "backprop",
    )  # fmt: skip
    rules = bd.rules_of(model)
    assert rules["backbone.bottom_up.res2.0.conv1"] == "feedback_alignment"
    assert rules["backbone.fpn_lateral3"] == RULE and rules["head.cls_subnet.0"] == RULE
    assert rules["head.cls_score"] == "backprop"
    source = model._error_source
    assert source.outputs == ["head.cls_score", "head.bbox_pred"] and source.collector == "head"
    a, k = 9, cfg.MODEL.RETINANET.NUM_CLASSES
    c = cfg.MODEL.FPN.OUT_CHANNELS
    assert model.head.cls_subnet[0].feedback.shape == (c, a * k + a * 4)
    assert model.backbone.fpn_lateral3.feedback.shape == (128, a * k + a * 4)
    assert model.backbone.bottom_up.res2[0].conv1.feedback.shape == (64, 64, 3, 3)

    mapper = DatasetMapper(cfg, is_train=True)
    batch = [mapper(copy.deepcopy(d)) for d in DatasetCatalog.get("shapes_train_mini")[:2]]
    model.train()
    with EventStorage():
        losses = model(batch)
    sum(losses.values()).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    for name in ("head.cls_subnet.0.weight", "backbone.fpn_output5.weight",
                 "backbone.bottom_up.stem.conv1.weight"):  # fmt: skip
        assert grads[name].abs().sum() > 0, name


# --- The tools ----------------------------------------------------------------------------------


def _run(tool, config, out, *opts, flags=(), timeout=600):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    cmd = [sys.executable, os.path.join(REPO, "tools", tool), "--config-file",
           os.path.join(REPO, "configs", config), *flags,
           "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(out), *opts]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_train_imagenet_trains_a_resnet18_with_the_rule(tmp_path):
    from bio_detectron.data import classification_folder

    root = classification_folder(
        "shapes", root=str(tmp_path / "data"), image_size=32, num_train_per_class=4,
        num_val_per_class=2,
    )  # fmt: skip
    opts = ["DATASETS.IMAGENET_ROOT", root, "INPUT.CLASSIFICATION.SIZE", "32",
            "SOLVER.IMS_PER_BATCH", "4", "DATALOADER.NUM_WORKERS", "0"]  # fmt: skip
    _run("train_imagenet.py", "ImageNet/resnet18_direct_feedback_alignment.yaml", tmp_path,
         *opts, "SOLVER.MAX_ITER", "3")  # fmt: skip
    ckpt = torch.load(tmp_path / "model_final.pth", weights_only=False)["model"]
    feedback = {k: v for k, v in ckpt.items() if k.endswith(".feedback")}
    assert len(feedback) == 21  # 20 convs and the classifier, all of them on the rule
    assert feedback["classifier.feedback"].shape == (512, 10)
    assert feedback["backbone.bottom_up.res3.0.conv1.feedback"].shape == (64, 10)


@pytest.mark.slow
def test_train_net_trains_a_retinanet_r18_and_resume_restores_b(tmp_path):
    opts = ["SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0", "TEST.EVAL_PERIOD", "0",
            "DATASETS.TRAIN", "('shapes_train_mini',)", "DATASETS.TEST", "()",
            "SOLVER.CHECKPOINT_PERIOD", "2", "INPUT.MIN_SIZE_TRAIN", "(64,)",
            "INPUT.MAX_SIZE_TRAIN", "64"]  # fmt: skip
    config = "Shapes-Detection/retinanet_R_18_FPN_direct_feedback_alignment.yaml"
    _run("train_net.py", config, tmp_path, *opts, "SOLVER.MAX_ITER", "2")
    first = torch.load(tmp_path / "model_final.pth", weights_only=False)["model"]
    assert first["head.cls_subnet.0.feedback"].shape[1] == 9 * (3 + 4)  # 3 shapes, 4 deltas
    # Resumed with another seed: B is the checkpoint's, and training goes on from it (5
    # iterations: the schedule's learning rate is 0 at the last one).
    _run("train_net.py", config, tmp_path, *opts, "SOLVER.MAX_ITER", "5", "MODEL.BIO.SEED", "9",
         flags=["--resume"])  # fmt: skip
    second = torch.load(tmp_path / "model_final.pth", weights_only=False)["model"]
    feedback = [k for k in first if k.endswith(".feedback")]
    assert len(feedback) == 34
    for k in feedback:
        assert torch.equal(first[k], second[k]), k
    assert not torch.equal(first["head.cls_subnet.0.weight"], second["head.cls_subnet.0.weight"])


# --- Several processes --------------------------------------------------------------------------


def _two_process_worker(config, root, output_dir):
    import train_imagenet
    from detectron2.engine import default_argument_parser
    from detectron2.utils import comm

    from bio_detectron.engine.classification import build_classification_trainer

    torch.set_num_threads(1)
    opts = ["MODEL.DEVICE", "cpu", "DATASETS.IMAGENET_ROOT", root, "INPUT.CLASSIFICATION.SIZE",
            "32", "SOLVER.IMS_PER_BATCH", "4", "SOLVER.MAX_ITER", "2", "DATALOADER.NUM_WORKERS",
            "0", "TEST.EVAL_PERIOD", "0", "SEED", "7", "OUTPUT_DIR", output_dir]  # fmt: skip
    args = default_argument_parser().parse_args(["--config-file", config, *opts])
    trainer = build_classification_trainer(train_imagenet.setup(args))
    trainer.resume_or_load(resume=False)
    trainer.train()
    model = trainer.unwrapped_model
    # Parameters and B (BatchNorm's running statistics are each process's own).
    state = {k: v.detach().clone() for k, v in model.named_parameters()}
    state.update((k, v.clone()) for k, v in model.named_buffers() if k.endswith(".feedback"))
    gathered = comm.all_gather(state)
    if comm.is_main_process():
        torch.save(gathered, os.path.join(output_dir, "states.pth"))


@pytest.mark.slow
def test_two_processes_have_the_same_b_and_train_the_same_classifier(tmp_path):
    """default_setup seeds each process differently: only B made from (seed, layer name) and
    rank 0's broadcast weights can make the two agree."""
    from bio_detectron.data import classification_folder
    from bio_detectron.engine import launch

    root = classification_folder(
        "shapes", root=str(tmp_path / "data"), image_size=32, num_train_per_class=4,
        num_val_per_class=2,
    )  # fmt: skip
    config = os.path.join(REPO, "configs/ImageNet/resnet18_direct_feedback_alignment.yaml")
    old = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # gloo on the CPU even where there is a GPU
    try:
        launch(_two_process_worker, 2, dist_url="auto", args=(config, root, str(tmp_path)))
    finally:
        os.environ.pop("CUDA_VISIBLE_DEVICES") if old is None else os.environ.update(
            CUDA_VISIBLE_DEVICES=old
        )
    first, second = torch.load(tmp_path / "states.pth", weights_only=False)
    feedback = [k for k in first if k.endswith(".feedback")]
    assert len(feedback) == 21
    for k in first:
        assert torch.equal(first[k], second[k]), k
    g = torch.Generator().manual_seed(layer_seed(0, "classifier"))
    torch.testing.assert_close(
        first["classifier.feedback"], torch.randn(512, 10, generator=g) / 10**0.5
    )

"""The optimizers of SOLVER.BIO: detectron2's SGD, or the seed code's batch-manhattan SGD."""

import pytest
import torch
from detectron2.config import LazyCall as L
from detectron2.config import get_cfg, instantiate
from omegaconf import OmegaConf
from torch import nn

import bio_detectron as bd
from bio_detectron.config import add_bio_config
from bio_detectron.core.optim import BatchManhattanSGD
from bio_detectron.solver import (
    bio_param_groups,
    build_bio_optimizer,
    check_trained_feedback,
    schedule_weight_decay,
    weight_decay_for_schedule,
)

LR, LAST_LR, WD, MU = 0.1, 0.5, 0.01, 0.9


class Classifier(nn.Module):
    """A body and a last layer named like a classifier's ("classifier": part "predictor")."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(3, 4)
        self.classifier = nn.Linear(4, 2)

    def forward(self, x):
        return self.classifier(torch.relu(self.body(x)))


def _cfg(*opts):
    cfg = get_cfg()
    add_bio_config(cfg)
    cfg.merge_from_list(
        ["SOLVER.BASE_LR", LR, "SOLVER.WEIGHT_DECAY", WD, "SOLVER.MOMENTUM", MU] + list(opts)
    )
    return cfg


def _model():
    model = Classifier().double()
    with torch.no_grad():  # weights near 0, so that some updates flip signs
        model.body.weight.copy_(torch.tensor([[0.3, -0.02, 0.0], [0.01, -0.4, 0.05]] * 2))
        model.body.bias.copy_(torch.tensor([0.01, -0.01, 0.2, 0.0]))
        model.classifier.weight.copy_(
            torch.tensor([[0.02, -0.3, 0.5, -0.01], [0.2, 0.03, -0.04, 0.1]])
        )
        model.classifier.bias.copy_(torch.tensor([0.005, -0.2]))
    return model


GRADS = [  # two steps of fixed gradients, per parameter name
    {
        "body.weight": torch.tensor([[2.0, 5.0, -1.0], [-3.0, 0.5, 0.0]] * 2),
        "body.bias": torch.tensor([4.0, -4.0, 0.0, 1.0]),
        "classifier.weight": torch.tensor([[1.0, -2.0, 0.3, 2.0], [-0.5, 1.0, 0.2, -4.0]]),
        "classifier.bias": torch.tensor([0.1, -3.0]),
    },
    {
        "body.weight": torch.tensor([[-1.0, 2.0, 3.0], [1.0, -0.2, 4.0]] * 2),
        "body.bias": torch.tensor([-2.0, 1.0, 3.0, -1.0]),
        "classifier.weight": torch.tensor([[-1.0, 0.5, 2.0, 1.0], [0.5, -1.0, 0.2, 3.0]]),
        "classifier.bias": torch.tensor([1.0, 1.0]),
    },
]


def _by_hand(model, bm, nsc, lr, wd=lambda n: WD):
    """Two steps of the seed code's update, written out per parameter name."""
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    buffers = {}
    for grads in GRADS:
        for name, w in params.items():
            g = grads[name].double()
            d = torch.sign(g) if bm(name) else g
            d = d + wd(name) * w
            v = d if name not in buffers else MU * buffers[name] + d
            buffers[name] = v
            new = w - lr(name) * v
            if nsc(name):
                flipped = torch.sign(w) * torch.sign(new) <= 0
                new = torch.where(flipped & (w >= 0), torch.full_like(new, 1e-10), new)
                new = torch.where(flipped & (w < 0), torch.full_like(new, -1e-10), new)
            params[name] = new
    return params


def _two_steps(model, optimizer):
    for grads in GRADS:
        for name, p in model.named_parameters():
            p.grad = grads[name].double().clone()
        optimizer.step()
    return {n: p.detach() for n, p in model.named_parameters()}


@pytest.mark.parametrize(
    "opts,bm,nsc,lr,wd",
    [
        # --bm: sign for all but the last layer, which keeps SGD at the base lr
        (
            ["SOLVER.BIO.OPTIMIZER", "BatchManhattanSGD"],
            lambda n: n.startswith("body"), lambda n: False, lambda n: LR, lambda n: WD,
        ),
        # --bm with 3x the decay where batch manhattan (weights and biases), not the last layer
        (
            ["SOLVER.BIO.OPTIMIZER", "BatchManhattanSGD",
             "SOLVER.BIO.BATCH_MANHATTAN_WEIGHT_DECAY_FACTOR", 3.0],
            lambda n: n.startswith("body"), lambda n: False, lambda n: LR,
            lambda n: 3 * WD if n.startswith("body") else WD,
        ),
        # --bm --nsc: no sign change for the body's weight, not its bias
        (
            ["SOLVER.BIO.OPTIMIZER", "BatchManhattanSGD", "SOLVER.BIO.NO_SIGN_CHANGE", True],
            lambda n: n.startswith("body"), lambda n: n == "body.weight", lambda n: LR,
            lambda n: WD,
        ),
        # --lbm --lnsc --llr: only the last layer, with its own lr
        (
            [
                "SOLVER.BIO.LAST_LAYER_BATCH_MANHATTAN", True,
                "SOLVER.BIO.LAST_LAYER_NO_SIGN_CHANGE", True,
                "SOLVER.BIO.LAST_LAYER_LR", LAST_LR,
            ],
            lambda n: n.startswith("classifier"), lambda n: n == "classifier.weight",
            lambda n: LAST_LR if n.startswith("classifier") else LR, lambda n: WD,
        ),
        # --lbm --llr with the factor: the last layer's decay only
        (
            [
                "SOLVER.BIO.LAST_LAYER_BATCH_MANHATTAN", True,
                "SOLVER.BIO.LAST_LAYER_LR", LAST_LR,
                "SOLVER.BIO.BATCH_MANHATTAN_WEIGHT_DECAY_FACTOR", 0.5,
            ],
            lambda n: n.startswith("classifier"), lambda n: False,
            lambda n: LAST_LR if n.startswith("classifier") else LR,
            lambda n: WD / 2 if n.startswith("classifier") else WD,
        ),
        # --bm --lbm --llr
        (
            [
                "SOLVER.BIO.OPTIMIZER", "BatchManhattanSGD",
                "SOLVER.BIO.LAST_LAYER_BATCH_MANHATTAN", True,
                "SOLVER.BIO.LAST_LAYER_LR", LAST_LR,
            ],
            lambda n: True, lambda n: False,
            lambda n: LAST_LR if n.startswith("classifier") else LR, lambda n: WD,
        ),
    ],
)  # fmt: skip
def test_two_steps_match_the_seed_code_by_hand(opts, bm, nsc, lr, wd):
    model = _model()
    expected = _by_hand(model, bm, nsc, lr, wd)
    optimizer = build_bio_optimizer(_cfg(*opts), model)
    assert isinstance(optimizer, BatchManhattanSGD)
    got = _two_steps(model, optimizer)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-12, atol=0, msg=name)
    if any(nsc(n) for n in expected):  # the hand computation did clamp some weights
        assert any((got[n].abs() == 1e-10).any() for n in expected if nsc(n))


def test_default_is_detectron2_sgd_and_plain_groups_step_as_torch_sgd():
    model = _model()
    optimizer = build_bio_optimizer(_cfg(), model)
    assert type(optimizer) is torch.optim.SGD
    reference = _two_steps(model, optimizer)
    model = _model()
    plain = BatchManhattanSGD(model.parameters(), lr=LR, momentum=MU, weight_decay=WD,
                              batch_manhattan=False)  # fmt: skip
    got = _two_steps(model, plain)
    for name in got:
        torch.testing.assert_close(got[name], reference[name], rtol=1e-14, atol=0)


def test_kolen_pollack_feedback_follows_its_weight_under_batch_manhattan():
    model = bd.convert_model(_model(), "kolen_pollack", exclude="classifier")
    bd.make_feedback_now(model)
    d0 = (model.body.weight - model.body.feedback).detach().clone()
    cfg = _cfg("SOLVER.BIO.OPTIMIZER", "BatchManhattanSGD")
    optimizer = build_bio_optimizer(cfg, model)
    model(torch.randn(5, 3, dtype=torch.double)).sum().backward()
    optimizer.step()
    d1 = (model.body.weight - model.body.feedback).detach()
    torch.testing.assert_close(d1, (1 - LR * WD) * d0, rtol=1e-12, atol=1e-15)

    with pytest.raises(ValueError, match="body.feedback is a feedback weight trained like"):
        build_bio_optimizer(_cfg("SOLVER.BIO.NO_SIGN_CHANGE", True), model)
    bad = torch.optim.SGD(
        [{"params": [model.body.weight]}, {"params": [model.body.feedback], "lr": 1.0}], lr=0.1
    )
    with pytest.raises(ValueError, match="body.feedback .kolen_pollack. must be optimized like"):
        check_trained_feedback(bad, model)
    with pytest.raises(ValueError, match="body.feedback .kolen_pollack. is not in the optimizer"):
        check_trained_feedback(torch.optim.SGD([model.body.weight], lr=0.1), model)


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="SOLVER.BIO.OPTIMIZER='Adam' is not allowed"):
        build_bio_optimizer(_cfg("SOLVER.BIO.OPTIMIZER", "Adam"), _model())
    with pytest.raises(ValueError, match="SOLVER.BIO.LAST_LAYER_LR=-1.0: must be a number >= 0"):
        build_bio_optimizer(_cfg("SOLVER.BIO.LAST_LAYER_LR", -1.0), _model())
    key = "SOLVER.BIO.BATCH_MANHATTAN_WEIGHT_DECAY_FACTOR"
    with pytest.raises(ValueError, match=f"{key}=-1.0: must be a number >= 0"):
        build_bio_optimizer(_cfg("SOLVER.BIO.OPTIMIZER", "BatchManhattanSGD", key, -1.0), _model())
    nothing = (
        f"{key}=2 is set, but no parameter steps by batch manhattan .SOLVER.BIO.OPTIMIZER is not"
    )
    with pytest.raises(ValueError, match=nothing):
        build_bio_optimizer(_cfg(key, 2.0), _model())  # plain SGD: the factor would do nothing
    with pytest.raises(
        ValueError, match="batch_manhattan_weight_decay_factor=2 needs weight_decay"
    ):
        bio_param_groups(_model(), 0.1, batch_manhattan_weight_decay_factor=2.0)
    with pytest.raises(ValueError, match="SOLVER.BIO.LAST_LAYER_BATCH_MANHATTAN is set, but"):
        build_bio_optimizer(
            _cfg("SOLVER.BIO.LAST_LAYER_BATCH_MANHATTAN", True), nn.Sequential(nn.Linear(2, 2))
        )


def _decays(optimizer, model):
    """The weight decay of each parameter, by name."""
    by_id = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    return {name: by_id[id(p)] for name, p in model.named_parameters()}


class Normed(nn.Module):
    """A layer, a GroupNorm (SOLVER.WEIGHT_DECAY_NORM) and a last layer."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(3, 4)
        self.norm = nn.GroupNorm(2, 4)
        self.classifier = nn.Linear(4, 2)


@pytest.mark.parametrize("optimizer", ["SGD", "BatchManhattanSGD"])
def test_weight_decay_follows_the_schedule_past_its_reference_length(optimizer):
    model = Normed()
    # detectron2's groups: biases (a norm's too) WEIGHT_DECAY_BIAS, norm weights WEIGHT_DECAY_NORM.
    decays = {"body.weight": WD, "body.bias": 0.004, "norm.weight": 0.002, "norm.bias": 0.004}
    decays["classifier.weight"], decays["classifier.bias"] = WD, 0.004
    opts = ["SOLVER.BIO.OPTIMIZER", optimizer, "SOLVER.WEIGHT_DECAY_NORM", 0.002,
            "SOLVER.WEIGHT_DECAY_BIAS", 0.004]  # fmt: skip
    cases = ((800, 1600, 0.5), (800, 3200, 0.25), (1000, 3000, 1 / 3), (800, 800, 1.0),
             (800, 200, 1.0), (0, 3200, 1.0))  # fmt: skip
    for reference, max_iter, factor in cases:
        cfg = _cfg(*opts, "SOLVER.MAX_ITER", max_iter,
                   "SOLVER.BIO.WEIGHT_DECAY_REFERENCE_ITER", reference)  # fmt: skip
        got = _decays(build_bio_optimizer(cfg, model), model)
        want = {name: value * factor for name, value in decays.items()}
        assert got == pytest.approx(want, rel=1e-12), (reference, max_iter)

    # WEIGHT_DECAY_BIAS None follows WEIGHT_DECAY, scaled with it; resolving twice = once.
    cfg = _cfg("SOLVER.MAX_ITER", 1600, "SOLVER.BIO.WEIGHT_DECAY_REFERENCE_ITER", 800)
    cfg.SOLVER.WEIGHT_DECAY_BIAS = None
    once = schedule_weight_decay(cfg)
    assert once.SOLVER.WEIGHT_DECAY == WD / 2 and once.SOLVER.WEIGHT_DECAY_BIAS is None
    assert cfg.SOLVER.WEIGHT_DECAY == WD  # the caller's config is left alone
    assert schedule_weight_decay(once).SOLVER.WEIGHT_DECAY == WD / 2
    assert _decays(build_bio_optimizer(once, model), model)["body.bias"] == WD / 2


def test_a_resolved_decay_stays_when_max_iter_changes_later():
    # As detectron2's REFERENCE_WORLD_SIZE changes MAX_ITER after the trainer resolved the decay.
    for max_iter in (400, 1600):
        cfg = schedule_weight_decay(
            _cfg("SOLVER.MAX_ITER", max_iter, "SOLVER.BIO.WEIGHT_DECAY_REFERENCE_ITER", 800)
        )
        decay = cfg.SOLVER.WEIGHT_DECAY
        cfg.SOLVER.MAX_ITER = 8 * max_iter
        assert (
            schedule_weight_decay(cfg).SOLVER.WEIGHT_DECAY == decay == WD * min(1, 800 / max_iter)
        )


def test_a_lazyconfig_decay_follows_train_max_iter():
    cfg = OmegaConf.create(
        {
            "train": {"max_iter": 3200},
            "optimizer": L(torch.optim.SGD)(
                params=[nn.Parameter(torch.zeros(1))],
                lr=0.1,
                weight_decay=L(weight_decay_for_schedule)(
                    weight_decay=0.05, reference_iter=800, max_iter="${train.max_iter}"
                ),
            ),
        }
    )
    assert instantiate(cfg.optimizer).param_groups[0]["weight_decay"] == 0.0125
    cfg.train.max_iter = 400  # shorter than the reference: the decay as given
    assert instantiate(cfg.optimizer).param_groups[0]["weight_decay"] == 0.05
    with pytest.raises(ValueError, match="max_iter=0: must be an integer >= 1"):
        weight_decay_for_schedule(0.05, 800, 0)
    with pytest.raises(ValueError, match="reference_iter=0: must be an integer >= 1"):
        weight_decay_for_schedule(0.05, 0, 800)


def test_bad_weight_decay_schedules_are_named():
    key = "SOLVER.BIO.WEIGHT_DECAY_REFERENCE_ITER"
    with pytest.raises(ValueError, match=f"{key}=-800: must be an integer >= 0"):
        schedule_weight_decay(_cfg(key, -800))
    with pytest.raises(ValueError, match=f"{key}=800 .* but SOLVER.MAX_ITER=0"):
        schedule_weight_decay(_cfg(key, 800, "SOLVER.MAX_ITER", 0))
    with pytest.raises(ValueError, match="SOLVER.WEIGHT_DECAY=-0.1: must be a number >= 0"):
        schedule_weight_decay(_cfg(key, 800, "SOLVER.MAX_ITER", 1600, "SOLVER.WEIGHT_DECAY", -0.1))


def test_a_lazyconfig_multiplies_the_batch_manhattan_decay():
    model = Normed()
    cfg = OmegaConf.create(
        {
            "optimizer": L(BatchManhattanSGD)(
                params=L(bio_param_groups)(
                    model=model, base_lr="${..lr}", weight_decay="${..weight_decay}",
                    weight_decay_norm=0.0, batch_manhattan_weight_decay_factor=50.0,
                ),
                lr=3e-4, momentum=0.9, weight_decay=1e-3,
            ),
        }
    )  # fmt: skip
    got = _decays(instantiate(cfg.optimizer), model)
    # The body's and its bias by batch manhattan, x50; the norm's 0 stays 0; the last layer's
    # SGD keeps 1e-3.
    want = {"body.weight": 0.05, "body.bias": 0.05, "norm.weight": 0.0, "norm.bias": 0.0,
            "classifier.weight": 1e-3, "classifier.bias": 1e-3}  # fmt: skip
    assert got == pytest.approx(want, rel=1e-12)

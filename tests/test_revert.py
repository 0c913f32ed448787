"""revert_model: converted layers become their original classes again, the model the stock one."""

import copy
import pickle

import pytest
import torch
import torchvision
from torch import nn

import bio_detectron as bd
from bio_detectron.core.layers import FeedbackLayer
from bio_detectron.core.rules import LearningRule


class TrainedFeedback(LearningRule):
    """A rule whose feedback tensor is an nn.Parameter (feedback_kind "parameter"), not
    registered."""

    name = "trained_feedback"
    feedback_kind = "parameter"

    def init_feedback(self, weight, generator):
        return torch.randn(weight.shape, generator=generator) * weight.std()

    def feedback_weight(self, weight, feedback):
        return feedback

    def feedback_grad(self, grad_weight):
        return grad_weight


RULES = bd.available_rules() + [TrainedFeedback()]
RULE_IDS = [r if isinstance(r, str) else r.name for r in RULES]
# What a converted layer adds to its module's __dict__ (layers._LAYER_ATTRIBUTES).
LAYER_ATTRIBUTES = ("learning_rule", "bio_seed", "bio_name", "_feedback_restored")


class EveryLayer(nn.Module):
    """One of each layer type conversion handles, detectron2's Conv2d (norm, activation) too."""

    def __init__(self):
        super().__init__()
        from detectron2.layers import Conv2d as D2Conv2d

        self.c1 = nn.Conv1d(3, 4, 3, padding=1)
        self.c2 = D2Conv2d(
            3, 4, 3, padding=1, bias=False, norm=nn.BatchNorm2d(4), activation=nn.ReLU()
        )
        self.c3 = nn.Conv3d(3, 4, 3, padding=1, padding_mode="reflect")
        self.t2 = nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1)
        self.fc = nn.Linear(3, 5)

    def forward(self, x):
        a = self.c1(x.mean(3))
        b = self.t2(self.c2(x))
        c = self.c3(x.unsqueeze(2).expand(-1, -1, 3, -1, -1))
        return a.mean() + b.mean() + c.mean() + self.fc(x.mean((2, 3))).sum()


def _d2_resnet():
    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.backbone import build_resnet_backbone

    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    return build_resnet_backbone(cfg, ShapeSpec(channels=3))


MODELS = {
    "every_layer": (EveryLayer, (2, 3, 8, 8)),
    "torchvision_resnet18": (lambda: torchvision.models.resnet18(num_classes=7), (2, 3, 32, 32)),
    "detectron2_resnet18": (_d2_resnet, (2, 3, 32, 32)),
}


def _loss(model, x):
    out = model(x)
    if isinstance(out, dict):
        return sum(v.square().mean() for v in out.values())
    return out.square().mean() if out.dim() else out


def _train_step(model, x):
    model.train()
    model.zero_grad()
    _loss(model, x).backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()


def _assert_stock(model, stock):
    """``model`` is ``stock`` module for module: classes, attributes, state dict, parameters."""
    modules, stock_modules = dict(model.named_modules()), dict(stock.named_modules())
    assert modules.keys() == stock_modules.keys()
    for name, m in modules.items():
        assert type(m) is type(stock_modules[name]), name
        assert not isinstance(m, FeedbackLayer), name
        assert "feedback" not in m._buffers and "feedback" not in m._parameters, name
        assert not set(LAYER_ATTRIBUTES) & set(vars(m)), name
    assert list(model.state_dict()) == list(stock.state_dict())
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in stock.named_parameters()]
    metadata = model.state_dict()._metadata
    assert not any(bd.core.checkpointing.METADATA_KEY in v for v in metadata.values())
    assert set(bd.rules_of(model).values()) == {"none"}


@pytest.mark.slow
@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_reverted_model_is_the_stock_model(model_name, rule):
    make, shape = MODELS[model_name]
    torch.manual_seed(0)
    model = make()
    stock = copy.deepcopy(model)
    bd.convert_model(model, rule, seed=1)
    assert set(bd.rules_of(model).values()) == {RULE_IDS[RULES.index(rule)]}
    x = torch.randn(shape)
    _train_step(model, x)  # the rule's feedback tensor is made, and used
    if getattr(rule, "feedback_kind", None) == "parameter" or rule in ("feedback_alignment",):
        assert any("feedback" in k for k in model.state_dict())

    assert bd.revert_model(model) is model
    _assert_stock(model, stock)

    # Same weights: outputs and gradients are the stock model's, bit for bit.
    stock.load_state_dict(model.state_dict(), strict=True)
    for m in (model, stock):
        m.train()
        m.zero_grad()
        _loss(m, x).backward()
    for (name, p), q in zip(model.named_parameters(), stock.parameters()):
        assert torch.equal(p.grad, q.grad), name
    model.eval(), stock.eval()
    with torch.no_grad():
        assert torch.equal(_loss(model, x), _loss(stock, x))

    # It pickles as the stock model, and converts again.
    _assert_stock(pickle.loads(pickle.dumps(model)), stock)
    bd.convert_model(model, "sign_symmetry")
    assert set(bd.rules_of(model).values()) == {"sign_symmetry"}


def test_revert_partially_converted_and_unconverted_models():
    torch.manual_seed(0)
    model = torchvision.models.resnet18()
    stock = copy.deepcopy(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bd.revert_model(model)  # nothing converted: nothing changes
    _assert_stock(model, stock)
    bd.convert_model(model, "feedback_alignment", include=r"^layer4\.")
    rules = bd.rules_of(model)
    assert rules["layer4.0.conv1"] == "feedback_alignment" and rules["conv1"] == "none"
    bd.revert_model(model)
    _assert_stock(model, stock)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_revert_a_layer_itself_drops_a_parameter_state():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3)
    bd.convert_model(conv, TrainedFeedback())
    assert [n for n, _ in conv.named_parameters()] == ["weight", "bias", "feedback"]
    assert bd.revert_model(conv) is conv
    assert type(conv) is nn.Conv2d and type(conv).forward is nn.Conv2d.forward
    assert [n for n, _ in conv.named_parameters()] == ["weight", "bias"]
    assert list(conv.state_dict()) == ["weight", "bias"]

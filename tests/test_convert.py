"""The converter on detectron2 models, and its errors."""
import pytest
import torch
from torch import nn

import bio_detectron as bd


def _d2_resnet(depth=18):
    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.backbone import build_resnet_backbone

    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    return build_resnet_backbone(cfg, ShapeSpec(channels=3))


def test_detectron2_resnet_every_conv_converted_names_unchanged():
    torch.manual_seed(0)
    model = _d2_resnet()
    names = [n for n, _ in model.named_parameters()]
    values = {k: v.clone() for k, v in model.state_dict().items()}
    n_convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    assert n_convs == 20  # stem + 8 blocks x 2 + 3 shortcuts
    bd.convert_model(model, "sign_symmetry")
    assert [n for n, _ in model.named_parameters()] == names
    assert set(bd.rules_of(model).values()) == {"sign_symmetry"}
    assert len(bd.rules_of(model)) == n_convs
    for k, v in model.state_dict().items():
        assert torch.equal(v, values[k]), k
    # detectron2's Conv2d keeps its class (isinstance) and its norm.
    from detectron2.layers import Conv2d as D2Conv2d

    assert isinstance(model.stem.conv1, D2Conv2d) and model.stem.conv1.norm is not None
    out = model(torch.randn(2, 3, 64, 64))
    sum(o.mean() for o in out.values()).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_include_exclude_select_layers():
    model = bd.convert_model(_d2_resnet(), "feedback_alignment", include=r"^res[45]\.", exclude="shortcut")
    rules = bd.rules_of(model)
    assert rules["res4.0.conv1"] == "feedback_alignment"
    assert rules["res4.0.shortcut"] == "none"
    assert rules["stem.conv1"] == "none"


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(rule="signsymmetry"), "unknown learning rule 'signsymmetry'; available: ['backprop'"),
        (dict(rule="backprop", scale="kaiming"), "has no option(s) ['scale']"),
        (dict(rule="sign_symmetry", sigma=2), "has no option(s) ['sigma']; its options are ['scale']"),
        (dict(rule="sign_symmetry", scale="he"), "scale='he' is not allowed"),
        (dict(rule="sign_symmetry", scale=-1.0), "scale=-1.0 is not allowed"),
        (dict(rule="backprop", include="^head\\."), "include='^head\\\\.' matches no convolution/Linear"),
        (dict(rule="backprop", exclude=["stem", "fpn"]), "exclude='fpn' matches no"),
        (dict(rule="backprop", include="res[2"), "include='res[2' is not a valid regular expression"),
    ],
)
def test_bad_input_raises_value_error_naming_it(kwargs, message):
    model = _d2_resnet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rule = kwargs.pop("rule")
    with pytest.raises(ValueError) as e:
        bd.convert_model(model, rule, **kwargs)
    assert message in str(e.value)
    assert set(bd.rules_of(model).values()) == {"none"}  # nothing half-converted
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_model_without_layers():
    with pytest.raises(ValueError, match="ReLU has no convolution or nn.Linear"):
        bd.convert_model(nn.ReLU(), "backprop")

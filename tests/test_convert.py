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


@pytest.mark.slow
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
    model = bd.convert_model(
        _d2_resnet(), "feedback_alignment", include=r"^res[45]\.", exclude="shortcut"
    )
    rules = bd.rules_of(model)
    assert rules["res4.0.conv1"] == "feedback_alignment"
    assert rules["res4.0.shortcut"] == "none"
    assert rules["stem.conv1"] == "none"


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(rule="signsymmetry"), "unknown learning rule 'signsymmetry'; available: ['backprop'"),
        (dict(rule="backprop", scale="kaiming"), "has no option(s) ['scale']"),
        (
            dict(rule="sign_symmetry", sigma=2),
            "has no option(s) ['sigma']; its options are ['scale']",
        ),
        (dict(rule="sign_symmetry", scale="he"), "scale='he' is not allowed"),
        (dict(rule="sign_symmetry", scale=-1.0), "scale=-1.0 is not allowed"),
        (
            dict(rule="backprop", include="^head\\."),
            "include='^head\\\\.' matches no convolution/Linear",
        ),
        (dict(rule="backprop", exclude=["stem", "fpn"]), "exclude='fpn' matches no"),
        (
            dict(rule="backprop", include="res[2"),
            "include='res[2' is not a valid regular expression",
        ),
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


# --- Layers a rule cannot act on ----------------------------------------------------------------

import torch.nn.functional as F  # noqa: E402


class OwnConv(nn.Conv2d):
    """Computes its convolution itself: the rule's path would never run."""

    def forward(self, x):
        return F.conv2d(x, self.weight * 2, self.bias, self.stride, self.padding)


class RoutedConv(nn.Conv2d):
    """A forward of its own that calls _conv_forward: convertible."""

    def forward(self, x):
        return self._conv_forward(F.relu(x), self.weight, self.bias)


class OwnLinear(nn.Linear):
    def forward(self, x):
        return super().forward(x) + 1


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return self.fc(self.attn(x, x, x)[0])


def _tied():
    net = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 10), nn.Linear(10, 10))
    net[1].weight = net[0].weight  # weight tying: the embedding reads the linear layer's weight
    return net


@pytest.mark.parametrize(
    "make,name,reason",
    [
        (
            lambda: nn.Sequential(nn.Conv2d(3, 4, 3), OwnConv(4, 4, 3)),
            "1",
            "does not call self._conv_forward",
        ),
        (lambda: nn.Sequential(OwnLinear(4, 4), nn.Linear(4, 4)), "0", "has a forward of its own"),
        (_tied, "1", "its weight is shared with 0.weight"),
    ],
)
def test_layer_the_rule_cannot_act_on_is_refused_by_name_or_skipped_with_warning(
    make, name, reason
):
    model = make()
    with pytest.raises(ValueError) as e:
        bd.convert_model(model, "sign_symmetry")
    assert f"{name}: " in str(e.value) and reason in str(e.value)
    assert not any(bd.is_converted(m) for m in model.modules())  # nothing half-converted
    with pytest.warns(UserWarning, match=f"{name}: .*{reason}"):
        bd.convert_model(model, "sign_symmetry", unsupported="skip")
    rules = bd.rules_of(model)
    assert rules[name] == "none"
    assert any(r == "sign_symmetry" for r in rules.values())
    # Excluding the layer is asking for it: no error.
    bd.convert_model(make(), "sign_symmetry", exclude=f"^{name}$")


def test_errors_about_an_argument_are_worded_with_the_callers_name_for_it():
    from bio_detectron.core.convert import ArgumentError
    from bio_detectron.modeling.parts import convert_parts, rules_from_cfg

    with pytest.raises(ArgumentError) as e:
        bd.convert_model(nn.Sequential(nn.Conv2d(3, 4, 3), OwnConv(4, 4, 3)), "sign_symmetry")
    assert (e.value.argument, e.value.value, e.value.index) == ("unsupported", "error", None)
    assert str(e.value).startswith("unsupported='error' refuses 1 layer(s) of Sequential")
    assert e.value.naming("MODEL.BIO.UNSUPPORTED").startswith(
        "MODEL.BIO.UNSUPPORTED='error' refuses 1 layer(s) of Sequential that cannot learn"
    )
    # The integration's conversion by parts words the core's errors with the config keys.
    from detectron2.config import get_cfg

    cfg = get_cfg()
    bd.add_bio_config(cfg)
    rules = rules_from_cfg(cfg)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), OwnConv(4, 4, 3))
    keys = {"unsupported": "MODEL.BIO.UNSUPPORTED", "exclude": "MODEL.BIO.EXCLUDE"}
    with pytest.raises(ValueError, match=r"^MODEL.BIO.UNSUPPORTED='error' refuses 1 layer"):
        convert_parts(model, rules, keys=keys)
    with pytest.raises(ValueError) as e:
        convert_parts(model, rules, exclude=["^1$", "^2$"], keys=keys)
    assert str(e.value).startswith("MODEL.BIO.EXCLUDE[1]='^2$' matches no convolution/Linear")
    with pytest.raises(ValueError) as e:
        convert_parts(model, rules, exclude=["("])
    assert str(e.value).startswith("exclude[0]='(' is not a valid regular expression")


def test_rules_of_is_truthful_about_attention():
    # Converted with its attention module, whose forward reads out_proj's weight: both learn.
    model = bd.convert_model(Attention(), "feedback_alignment")
    assert bd.rules_of(model) == {
        "attn.in_proj": "feedback_alignment",
        "attn.out_proj": "feedback_alignment",
        "fc": "feedback_alignment",
    }
    # out_proj without its attention module: refused, or skipped with a warning naming it.
    reason = "attn.out_proj: MultiheadAttention 'attn' reads its weight directly"
    with pytest.raises(ValueError, match=reason):
        bd.convert_model(Attention(), "feedback_alignment", exclude="attn$")
    with pytest.warns(UserWarning, match=reason):
        model = bd.convert_model(
            Attention(), "feedback_alignment", exclude="attn$", unsupported="skip"
        )
    assert bd.rules_of(model) == {
        "attn.in_proj": "none",
        "attn.out_proj": "none",
        "fc": "feedback_alignment",
    }
    # A layer converted by hand inside an attention module that is not converted still is not
    # trained by its rule.
    from bio_detectron.core.layers import convert_layer

    convert_layer(model.attn.out_proj, "feedback_alignment")
    assert bd.rules_of(model)["attn.out_proj"] == "none"


def test_conv_subclass_calling_conv_forward_learns_with_the_rule():
    torch.manual_seed(0)
    conv = bd.convert_model(RoutedConv(3, 4, 3).double(), "sign_symmetry")
    assert bd.rules_of(conv) == {"": "sign_symmetry"}
    x = torch.randn(2, 3, 6, 6, dtype=torch.double, requires_grad=True)
    y = conv(x)
    g = torch.randn_like(y)
    y.backward(g)
    x2 = x.detach().clone().requires_grad_()
    F.conv2d(F.relu(x2), conv.feedback_weight()).backward(g)
    torch.testing.assert_close(x.grad, x2.grad)


def test_unsupported_option_is_checked():
    with pytest.raises(ValueError, match="unsupported='ignore' is not allowed"):
        bd.convert_model(nn.Linear(2, 2), "backprop", unsupported="ignore")


# --- Parts of any backbone ----------------------------------------------------------------------


def test_parts_of_fpn_and_vitdet_backbones_found_structurally():
    from detectron2 import model_zoo
    from detectron2.config import LazyConfig, instantiate

    from bio_detectron.modeling import parts_of

    lc = LazyConfig.load(model_zoo.get_config_file("common/models/mask_rcnn_vitdet.py"))
    net = lc.model.backbone.net
    net.depth, net.embed_dim, net.num_heads, net.img_size = 1, 32, 2, 64
    lc.model.backbone.square_pad = 64
    model = instantiate(lc.model)
    parts = parts_of(model)
    assert (
        parts["backbone.net.patch_embed.proj"]
        == parts["backbone.net.blocks.0.attn.qkv"]
        == "backbone"
    )
    assert parts["backbone.simfp_2.0"] == parts["backbone.simfp_5.1"] == "fpn"  # deconv, pool+conv
    assert parts["roi_heads.mask_head.deconv"] == "head"
    assert (
        parts["roi_heads.mask_head.predictor"]
        == parts["roi_heads.box_predictor.cls_score"]
        == "predictor"
    )
    # RegNet inside an FPN (new_baselines): the FPN's bottom_up, whatever its module names.
    lc = LazyConfig.load(
        model_zoo.get_config_file("new_baselines/mask_rcnn_regnetx_4gf_dds_FPN_100ep_LSJ.py")
    )
    parts = parts_of(instantiate(lc.model))
    assert parts["backbone.bottom_up.s1.b1.f.a"] == "backbone"
    assert parts["backbone.fpn_lateral2"] == "fpn"
    counts = {p: list(parts.values()).count(p) for p in ("backbone", "fpn", "head", "predictor")}
    assert counts["fpn"] == 8 and counts["backbone"] > 50, counts

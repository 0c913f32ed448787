"""
What conversion gives every shipped config, pinned: the part (and so the rule) of every layer of
every config in configs/, and the fixed feedback weight B of a few layers of a few of them (B's
seed is the run's seed and the layer's full module name), so that checkpoints written before a
change of the conversion code load after it and describe the same B.
"""

import glob
import hashlib
import json
import os

import pytest
import torch
from detectron2.config import LazyConfig, get_cfg, instantiate
from detectron2.modeling import build_model

import bio_detectron as bd
from bio_detectron.config import add_bio_config, add_classification_config
from bio_detectron.modeling.classification import build_classifier

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")

pytestmark = pytest.mark.usefixtures("one_thread")

# A rule per part, all different and none backprop, so that rules_of tells each layer's part (and
# "none" an excluded layer).
_PARTS = {
    "BACKBONE": "sign_symmetry",
    "FPN": "feedback_alignment",
    "HEAD": "kolen_pollack",
    "PREDICTOR": "weight_mirror",
}

# digest of rules_of(model) with each part on its own rule (see _PARTS) -> the configs that
# build that model; measured on the code that converted pieces while building them.
PART_DIGESTS = {
    "f952c5ac2fd6ded8": [
        "Base-BioRetinaNet.yaml",
        "COCO-Detection/retinanet_R_18_FPN_backprop_1x.py",
        "COCO-Detection/retinanet_R_18_FPN_backprop_1x.yaml",
        "COCO-Detection/retinanet_R_18_FPN_feedback_alignment_1x.py",
        "COCO-Detection/retinanet_R_18_FPN_feedback_alignment_1x.yaml",
        "COCO-Detection/retinanet_R_18_FPN_sign_symmetry_1x.py",
        "COCO-Detection/retinanet_R_18_FPN_sign_symmetry_1x.yaml",
        "VOC-Detection/Base-VOC.yaml",
        "VOC-Detection/retinanet_R_18_FPN_backprop.py",
        "VOC-Detection/retinanet_R_18_FPN_backprop.yaml",
        "VOC-Detection/retinanet_R_18_FPN_feedback_alignment.py",
        "VOC-Detection/retinanet_R_18_FPN_feedback_alignment.yaml",
        "VOC-Detection/retinanet_R_18_FPN_kolen_pollack.py",
        "VOC-Detection/retinanet_R_18_FPN_kolen_pollack.yaml",
        "VOC-Detection/retinanet_R_18_FPN_sign_symmetry.py",
        "VOC-Detection/retinanet_R_18_FPN_sign_symmetry.yaml",
        "VOC-Detection/retinanet_R_18_FPN_sign_symmetry_bm.py",
        "VOC-Detection/retinanet_R_18_FPN_sign_symmetry_bm.yaml",
    ],
    "20336fbab5b73801": [
        "COCO-Detection/retinanet_R_50_FPN_backprop_1x.py",
        "COCO-Detection/retinanet_R_50_FPN_backprop_1x.yaml",
        "COCO-Detection/retinanet_R_50_FPN_feedback_alignment_1x.py",
        "COCO-Detection/retinanet_R_50_FPN_feedback_alignment_1x.yaml",
        "COCO-Detection/retinanet_R_50_FPN_sign_symmetry_1x.py",
        "COCO-Detection/retinanet_R_50_FPN_sign_symmetry_1x.yaml",
        "VOC-Detection/retinanet_R_50_FPN_backprop.py",
        "VOC-Detection/retinanet_R_50_FPN_backprop.yaml",
        "VOC-Detection/retinanet_R_50_FPN_feedback_alignment.py",
        "VOC-Detection/retinanet_R_50_FPN_feedback_alignment.yaml",
        "VOC-Detection/retinanet_R_50_FPN_kolen_pollack.py",
        "VOC-Detection/retinanet_R_50_FPN_kolen_pollack.yaml",
        "VOC-Detection/retinanet_R_50_FPN_sign_symmetry.py",
        "VOC-Detection/retinanet_R_50_FPN_sign_symmetry.yaml",
        "VOC-Detection/retinanet_R_50_FPN_sign_symmetry_bm.py",
        "VOC-Detection/retinanet_R_50_FPN_sign_symmetry_bm.yaml",
    ],
    "cd9c9b1bb6d4719d": [
        "ImageNet/Base-Classification.yaml",
        "ImageNet/resnet18_backprop.yaml",
        "ImageNet/resnet18_direct_feedback_alignment.yaml",
        "ImageNet/resnet18_feedback_alignment.yaml",
        "ImageNet/resnet18_feedback_alignment_signed_init.yaml",
        "ImageNet/resnet18_kolen_pollack.yaml",
        "ImageNet/resnet18_sign_symmetry.yaml",
        "ImageNet/resnet18_sign_symmetry_bm.yaml",
        "ImageNet/resnet18_sign_symmetry_random_magnitude.yaml",
        "ImageNet/resnet18_weight_mirror.yaml",
    ],
    "7884238a6d5d9f7e": [
        "ImageNet/alexnet_backprop.yaml",
        "ImageNet/alexnet_direct_feedback_alignment.yaml",
        "ImageNet/alexnet_feedback_alignment.yaml",
        "ImageNet/alexnet_feedback_alignment_signed_init.yaml",
        "ImageNet/alexnet_kolen_pollack.yaml",
        "ImageNet/alexnet_sign_symmetry.yaml",
        "ImageNet/alexnet_sign_symmetry_bm.yaml",
        "ImageNet/alexnet_sign_symmetry_random_magnitude.yaml",
        "ImageNet/alexnet_weight_mirror.yaml",
    ],
    "f22cc76be0282498": [
        "ImageNet/resnet50_backprop.yaml",
        "ImageNet/resnet50_feedback_alignment.yaml",
        "ImageNet/resnet50_kolen_pollack.yaml",
        "ImageNet/resnet50_sign_symmetry.yaml",
    ],
    "11334434090e045b": [
        "ImageNet/Base-ViT-Tiny.yaml",
        "ImageNet/vit_tiny_backprop.yaml",
        "ImageNet/vit_tiny_direct_feedback_alignment.yaml",
        "ImageNet/vit_tiny_feedback_alignment.yaml",
        "ImageNet/vit_tiny_feedback_alignment_signed_init.yaml",
        "ImageNet/vit_tiny_kolen_pollack.yaml",
        "ImageNet/vit_tiny_sign_symmetry.yaml",
        "ImageNet/vit_tiny_sign_symmetry_random_magnitude.yaml",
        "ImageNet/vit_tiny_weight_mirror.yaml",
    ],
    "5b9f422ea0ea2334": [
        "Photos-Detection/retinanet_R_18_FPN_backprop.yaml",
        "Photos-Detection/retinanet_R_18_FPN_direct_feedback_alignment.yaml",
        "Photos-Detection/retinanet_R_18_FPN_feedback_alignment.yaml",
        "Photos-Detection/retinanet_R_18_FPN_kolen_pollack.yaml",
        "Photos-Detection/retinanet_R_18_FPN_sign_symmetry.yaml",
        "Photos-Detection/retinanet_R_18_FPN_sign_symmetry_bm.yaml",
        "Photos-Detection/retinanet_R_18_FPN_weight_mirror.yaml",
        "Shapes-Detection/Base-Shapes-BatchManhattan.yaml",
        "Shapes-Detection/Base-Shapes.yaml",
        "Shapes-Detection/retinanet_R_18_FPN_backprop.py",
        "Shapes-Detection/retinanet_R_18_FPN_backprop.yaml",
        "Shapes-Detection/retinanet_R_18_FPN_direct_feedback_alignment.yaml",
        "Shapes-Detection/retinanet_R_18_FPN_feedback_alignment.py",
        "Shapes-Detection/retinanet_R_18_FPN_feedback_alignment.yaml",
        "Shapes-Detection/retinanet_R_18_FPN_kolen_pollack.yaml",
        "Shapes-Detection/retinanet_R_18_FPN_sign_symmetry.py",
        "Shapes-Detection/retinanet_R_18_FPN_sign_symmetry.yaml",
        "Shapes-Detection/retinanet_R_18_FPN_sign_symmetry_bm.yaml",
        "Shapes-Detection/retinanet_R_18_FPN_weight_mirror.yaml",
        "Textures-Detection/retinanet_R_18_FPN_backprop.yaml",
        "Textures-Detection/retinanet_R_18_FPN_direct_feedback_alignment.yaml",
        "Textures-Detection/retinanet_R_18_FPN_feedback_alignment.yaml",
        "Textures-Detection/retinanet_R_18_FPN_kolen_pollack.yaml",
        "Textures-Detection/retinanet_R_18_FPN_sign_symmetry.yaml",
        "Textures-Detection/retinanet_R_18_FPN_sign_symmetry_bm.yaml",
        "Textures-Detection/retinanet_R_18_FPN_weight_mirror.yaml",
        "quick_schedules/retinanet_R_18_FPN_sign_symmetry_instant_test.py",
        "quick_schedules/retinanet_R_18_FPN_sign_symmetry_instant_test.yaml",
    ],
    # The ViTDet-style RetinaNet (configs/common/bio_vitdet.py), measured when it was added.
    "acb81e6dc0af41c6": [
        "Photos-Detection/retinanet_ViT_tiny_SFP_backprop.py",
        "Photos-Detection/retinanet_ViT_tiny_SFP_direct_feedback_alignment.py",
        "Photos-Detection/retinanet_ViT_tiny_SFP_feedback_alignment.py",
        "Photos-Detection/retinanet_ViT_tiny_SFP_kolen_pollack.py",
        "Photos-Detection/retinanet_ViT_tiny_SFP_sign_symmetry.py",
        "Photos-Detection/retinanet_ViT_tiny_SFP_sign_symmetry_bm.py",
        "Photos-Detection/retinanet_ViT_tiny_SFP_weight_mirror.py",
        "Shapes-Detection/retinanet_ViT_tiny_SFP_backprop.py",
        "Shapes-Detection/retinanet_ViT_tiny_SFP_direct_feedback_alignment.py",
        "Shapes-Detection/retinanet_ViT_tiny_SFP_feedback_alignment.py",
        "Shapes-Detection/retinanet_ViT_tiny_SFP_kolen_pollack.py",
        "Shapes-Detection/retinanet_ViT_tiny_SFP_sign_symmetry.py",
        "Shapes-Detection/retinanet_ViT_tiny_SFP_sign_symmetry_bm.py",
        "Shapes-Detection/retinanet_ViT_tiny_SFP_weight_mirror.py",
    ],
}
# config -> layer -> (sum of B, sum of |B|, B's first three values), torch.manual_seed(0) before
# the build; measured on the code that converted pieces while building them.
FEEDBACK = {
    "Shapes-Detection/retinanet_R_18_FPN_feedback_alignment.yaml": {
        "backbone.bottom_up.stem.conv1": (
            -3.956942,
            151.959813,
            (0.01723049, 0.02300641, 0.02735431),
        ),
        "backbone.fpn_lateral3": (9.553861, 996.914047, (0.05586153, -0.22661065, 0.04903355)),
        "backbone.top_block.p6": (-14.49653, 6001.008762, (0.00252897, -0.00614704, -0.00360671)),
        "head.cls_subnet.0": (2.675951, 938.019319, (0.00211842, 0.00943077, -0.00604471)),
        "head.cls_score": (-2.598296, 197.576087, (-0.01063087, 0.00492462, 0.00073783)),
    },
    "VOC-Detection/retinanet_R_18_FPN_kolen_pollack.py": {
        "backbone.bottom_up.res2.0.conv1": (
            0.565115,
            147.461049,
            (0.00243714, -0.00841219, 0.00507208),
        ),
        "head.bbox_subnet.2": (0.543719, 2351.823251, (-0.00076639, 0.00823156, -0.00527837)),
        "head.bbox_pred": (-0.284827, 331.471476, (0.00242855, -0.00450855, 0.00627222)),
    },
    "ImageNet/resnet18_feedback_alignment.yaml": {
        "backbone.bottom_up.stem.conv1": (
            -4.920129,
            188.949405,
            (0.02142468, 0.02860657, 0.03401281),
        ),
        "backbone.bottom_up.res5.1.conv2": (
            3.713546,
            39203.639087,
            (-0.03506415, 0.01928465, -0.00269509),
        ),
    },
    "ImageNet/alexnet_feedback_alignment.yaml": {
        "backbone.bottom_up.conv1": (4.671843, 296.668755, (-0.00158285, 0.00728096, 0.01870139)),
        "head.fc6": (-45.216723, 313761.765638, (0.00523027, 0.010859, 0.0140164)),
    },
    # An attention module's projections: B seeded by the name of each. (conv_proj's pin changed
    # when the patches went from 4x4 to 8x8: its B is shaped like its weight.)
    "ImageNet/vit_tiny_feedback_alignment.yaml": {
        "backbone.bottom_up.conv_proj": (
            3.219386,
            267.101116,
            (0.03350096, 0.01522363, -0.01637498),
        ),
        "backbone.bottom_up.encoder.layers.encoder_layer_0.self_attention.in_proj": (
            -18.594522,
            2266.388944,
            (0.0608839, 0.01396199, 0.08786248),
        ),
        "backbone.bottom_up.encoder.layers.encoder_layer_3.self_attention.out_proj": (
            8.177371,
            751.497534,
            (0.10200245, 0.06440306, 0.31067687),
        ),
    },
    # The ViT's projections and the pyramid's transposed convolution.
    "Shapes-Detection/retinanet_ViT_tiny_SFP_feedback_alignment.py": {
        "backbone.net.patch_embed.proj": (
            0.623166,
            2118.613229,
            (-0.03645528, -0.0123814, 0.00437629),
        ),
        "backbone.net.blocks.0.attn.qkv": (
            -1.03653,
            1410.037545,
            (-0.02053254, -0.002597, -0.01877208),
        ),
        "backbone.net.blocks.5.mlp.fc2": (
            -5.498664,
            1879.455135,
            (-0.00945677, 0.00545269, 0.00609312),
        ),
        "backbone.simfp_3.0": (20.28781, 1502.153871, (0.01090618, 0.00880207, 0.00231443)),
    },
}
# One config of each model above (yacs and LazyConfig) runs in the quick suite, all in the slow one.
QUICK = {
    "Base-BioRetinaNet.yaml",
    "COCO-Detection/retinanet_R_50_FPN_backprop_1x.yaml",
    "ImageNet/resnet18_feedback_alignment.yaml",
    "ImageNet/alexnet_feedback_alignment.yaml",
    "ImageNet/resnet50_feedback_alignment.yaml",
    "ImageNet/vit_tiny_feedback_alignment.yaml",
    "Shapes-Detection/retinanet_ViT_tiny_SFP_feedback_alignment.py",
    "quick_schedules/retinanet_R_18_FPN_sign_symmetry_instant_test.py",
    "quick_schedules/retinanet_R_18_FPN_sign_symmetry_instant_test.yaml",
}
DIGEST_OF = {config: digest for digest, configs in PART_DIGESTS.items() for config in configs}


def build(config: str, parts=None) -> torch.nn.Module:
    """The model of configs/``config`` (a yacs or LazyConfig file), on the CPU, with ``parts``
    (part -> rule) set over the config's own."""
    path = os.path.join(CONFIGS, config)
    parts = parts or {}
    if path.endswith(".py"):
        cfg = LazyConfig.load(path)
        cfg.model.parts = {**cfg.model.get("parts", {}), **{k.lower(): v for k, v in parts.items()}}
        return instantiate(cfg.model)
    cfg = get_cfg()
    add_bio_config(cfg)
    classification = config.startswith("ImageNet/")
    if classification:
        add_classification_config(cfg)
    cfg.merge_from_file(path)
    cfg.MODEL.DEVICE = "cpu"
    for part, rule in parts.items():
        cfg.MODEL.BIO.PARTS[part] = rule
    return build_classifier(cfg, 10) if classification else build_model(cfg)


def _digest(rules) -> str:
    return hashlib.sha256(json.dumps(sorted(rules.items())).encode()).hexdigest()[:16]


def test_every_config_is_pinned():
    found = glob.glob(os.path.join(CONFIGS, "**", "*.yaml"), recursive=True)
    found += glob.glob(os.path.join(CONFIGS, "*", "*.py"))
    found = {os.path.relpath(p, CONFIGS) for p in found}
    found = {p for p in found if not p.startswith("common" + os.sep)}
    assert found == set(DIGEST_OF)


@pytest.mark.parametrize(
    "config",
    [c if c in QUICK else pytest.param(c, marks=pytest.mark.slow) for c in sorted(DIGEST_OF)],
)
def test_every_layer_keeps_its_part(config):
    torch.manual_seed(0)
    rules = bd.rules_of(build(config, _PARTS))
    assert _digest(rules) == DIGEST_OF[config], sorted(rules.items())


@pytest.mark.parametrize("config", sorted(FEEDBACK))
def test_feedback_weights_of_shipped_configs_are_unchanged(config):
    torch.manual_seed(0)
    model = build(config)
    modules = dict(model.named_modules())
    for name, (total, total_abs, first) in FEEDBACK[config].items():
        layer = modules[name]
        layer.make_feedback_now()
        b = layer.feedback.double()
        assert b.sum().item() == pytest.approx(total, rel=1e-5, abs=1e-5), name
        assert b.abs().sum().item() == pytest.approx(total_abs, rel=1e-6), name
        assert b.flatten()[:3].tolist() == pytest.approx(first, rel=1e-5, abs=1e-8), name

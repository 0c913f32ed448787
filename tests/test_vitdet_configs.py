"""
The ViTDet-style RetinaNet configs (configs/{Shapes,Photos}-Detection/retinanet_ViT_tiny_SFP_*.py,
on configs/common/bio_vitdet.py): every layer of the ViT, its pyramid and the head learns with the
leaf's rule, leaves differ only by the rule, a training step of each rule gives the gradients its
rule makes, and one config trains and evaluates through tools/lazyconfig_train_net.py.
"""

import copy
import glob
import json
import os
import subprocess
import sys

import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.data import transforms as T
from detectron2.modeling import SimpleFeaturePyramid, ViT
from detectron2.utils.events import EventStorage
from omegaconf import OmegaConf
from torch import nn

import bio_detectron as bd
from bio_detectron.core.mirror import InputShapes, mirror_layers, mirror_step
from bio_detectron.core.optim import BatchManhattanSGD

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")
RULES = (
    "backprop",
    "sign_symmetry",
    "sign_symmetry_bm",
    "feedback_alignment",
    "kolen_pollack",
    "weight_mirror",
    "direct_feedback_alignment",
)
DATASETS = ("Shapes-Detection", "Photos-Detection")
PREDICTORS = {"head.cls_score", "head.bbox_pred"}

pytestmark = pytest.mark.usefixtures("one_thread")


def path(dataset, rule):
    return os.path.join(CONFIGS, dataset, f"retinanet_ViT_tiny_SFP_{rule}.py")


def load(dataset, rule, *opts):
    return LazyConfig.apply_overrides(LazyConfig.load(path(dataset, rule)), list(opts))


def layers(model):
    return {
        n for n, m in model.named_modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))
    }


def intended(rule, names):
    """The rule each layer should learn with: the leaf's everywhere; sign_symmetry keeps the
    predictors on backprop, as the R18 configs do; sign_symmetry_bm is sign_symmetry with
    batch-manhattan SGD."""
    base = "sign_symmetry" if rule == "sign_symmetry_bm" else rule
    keep = PREDICTORS if rule == "sign_symmetry" else set()
    return {n: "backprop" if n in keep else base for n in names}


def test_the_family_is_complete():
    for dataset in DATASETS:
        found = glob.glob(os.path.join(CONFIGS, dataset, "retinanet_ViT_tiny_SFP_*.py"))
        assert sorted(found) == sorted(path(dataset, r) for r in RULES)
    # The R18 family of each dataset has the same rules.
    for dataset in DATASETS:
        r18 = glob.glob(os.path.join(CONFIGS, dataset, "retinanet_R_18_FPN_*.yaml"))
        assert {os.path.basename(p)[len("retinanet_R_18_FPN_") : -5] for p in r18} == set(RULES)


def _shared(cfg):
    """What a leaf shares with its siblings: all but the rule's keys and the output folder."""
    cfg = copy.deepcopy(cfg)
    for key in ("rule", "scale", "parts"):
        cfg.model.pop(key, None)
    cfg.train.pop("bio_mirror", None)
    cfg.train.pop("output_dir")
    cfg.pop("optimizer")
    return _plain(cfg)


def _plain(cfg):
    """A config as comparable text: the ViT's norm_layer, a functools.partial, has no ==."""
    return json.dumps(OmegaConf.to_container(cfg, resolve=False), default=repr, sort_keys=True)


@pytest.mark.parametrize("dataset", DATASETS)
def test_leaves_differ_only_by_the_rule(dataset):
    base = _shared(load(dataset, "backprop"))
    for rule in RULES:
        cfg = load(dataset, rule)
        assert _shared(cfg) == base, rule
        assert cfg.model.rule == ("sign_symmetry" if rule == "sign_symmetry_bm" else rule)
        folder = "shapes" if dataset.startswith("Shapes") else "photos"
        assert cfg.train.output_dir == f"output/{folder}/retinanet_ViT_tiny_SFP_{rule}"
        bm = rule == "sign_symmetry_bm"
        assert (cfg.optimizer._target_ is BatchManhattanSGD) == bm, rule
        if not bm:
            # Direct feedback alignment trains at a tenth of the others' lr, as its R18 config.
            expected = dict(load(dataset, "backprop").optimizer)
            if rule == "direct_feedback_alignment":
                expected["lr"] = 0.002
            assert dict(cfg.optimizer) == expected, rule
    # The rules' settings are those of the R18 configs of the same rule.
    assert load(dataset, "sign_symmetry").model.parts == {"predictor": "backprop"}
    assert load(dataset, "kolen_pollack").model.scale == 0.005
    assert load(dataset, "weight_mirror").train.bio_mirror == dict(
        period=5, decay=0.5, lr=0.5, samples_per_input=2.0
    )
    assert load(dataset, "direct_feedback_alignment").model.get("scale", "kaiming") == "kaiming"


def test_photos_differ_from_shapes_only_by_the_dataset():
    shapes, photos = load(DATASETS[0], "backprop"), load(DATASETS[1], "backprop")
    assert (photos.model.model.num_classes, shapes.model.model.num_classes) == (10, 3)
    assert photos.dataloader.train.dataset.names == "photos_train"
    assert photos.dataloader.test.dataset.names == "photos_val"
    assert photos.dataloader.train.mapper.augmentations[0].short_edge_length == (128,)
    assert (photos.train.max_iter, shapes.train.max_iter) == (3200, 800)
    # 50 warm-up iterations in both (the scheduler's warm-up is a fraction of the run).
    assert photos.lr_multiplier.warmup_length * 3200 == pytest.approx(50)
    assert shapes.lr_multiplier.warmup_length * 800 == pytest.approx(50)
    for key, value in dict(img_size=128, pretrain_img_size=128).items():
        assert photos.model.model.backbone.net[key] == value
        photos.model.model.backbone.net[key] = shapes.model.model.backbone.net[key]
    for cfg in (shapes, photos):
        cfg.model.model.num_classes = 3
        cfg.dataloader = cfg.lr_multiplier = None
        cfg.train.max_iter = 0
        cfg.train.output_dir = ""
    assert _plain(photos) == _plain(shapes)


def test_the_backbone_is_a_plain_vit_under_a_simple_pyramid_with_the_r18_head_levels():
    model = instantiate(load(DATASETS[0], "backprop").model)
    pyramid = model.backbone
    assert isinstance(pyramid, SimpleFeaturePyramid) and isinstance(pyramid.net, ViT)
    shapes = pyramid.output_shape()
    assert {k: (s.channels, s.stride) for k, s in shapes.items()} == {
        f"p{i}": (128, 2**i) for i in range(3, 8)
    }
    vit = pyramid.net
    assert len(vit.blocks) == 6 and all(b.window_size == 0 for b in vit.blocks)
    assert vit.blocks[0].attn.qkv.in_features == 192 and vit.blocks[0].attn.num_heads == 3
    assert vit.pos_embed.shape == (1, 100, 192)  # 10x10 tokens of a 160 px image, no class token


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("rule", RULES)
def test_every_layer_learns_with_the_intended_rule(dataset, rule):
    model = instantiate(load(dataset, rule).model)
    names = layers(model)
    vit = {
        f"backbone.net.blocks.{i}.{p}"
        for i in range(6)
        for p in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
    }
    assert vit | {"backbone.net.patch_embed.proj"} <= names
    assert len(names) == 40  # 25 in the ViT, 9 in the pyramid, 4 in the towers, 2 predictors
    assert bd.rules_of(model) == intended(rule, names)


@pytest.fixture(scope="module")
def batch():
    """Two 96 px images of shapes_train_mini with their boxes and classes."""
    mapper = DatasetMapper(
        is_train=True, augmentations=[T.ResizeShortestEdge(96, 96)], image_format="RGB"
    )
    return [mapper(copy.deepcopy(d)) for d in DatasetCatalog.get("shapes_train_mini")[:2]]


def _gradients(model, batch):
    model.train()
    model.zero_grad()
    with EventStorage():
        losses = model(batch)
    sum(losses.values()).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("rule", RULES)
def test_a_training_step_gives_the_gradients_of_the_rule(batch, rule):
    cfg = load(DATASETS[0], rule)
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    torch.manual_seed(0)
    stock = instantiate(cfg.model.model)  # the same weights, not converted
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], p) for n, p in stock.named_parameters())
    shapes = InputShapes(mirror_layers(model))
    with shapes:
        grads = _gradients(model, batch)
    expected = _gradients(stock, batch)
    # Kolen-Pollack's B is a parameter too, with a gradient of its own.
    assert set(expected) <= set(grads)
    for name in layers(model):
        g, e = grads[name + ".weight"], expected[name + ".weight"]
        assert torch.isfinite(g).all() and g.abs().sum() > 0, name
        if rule == "backprop" or name in PREDICTORS:
            # The forward pass is the stock one, and a predictor's output gradient is the loss's:
            # its weight gradient is exact under every rule.
            torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-7, msg=name)
        elif name.startswith("backbone.net."):
            # Every projection of the ViT gets the error through the rule's feedback, not W.
            assert not torch.allclose(g, e, rtol=1e-3, atol=1e-6), name

    # The config's optimizer steps every layer's weight.
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    assert isinstance(optimizer, BatchManhattanSGD) == (rule == "sign_symmetry_bm")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer.step()
    for n, p in model.named_parameters():
        assert torch.isfinite(p).all(), n
    for name in layers(model):
        assert not torch.equal(params[name + ".weight"], before[name + ".weight"]), name

    if rule == "weight_mirror":
        # The mirror of train.bio_mirror brings every layer's B towards W, the ViT's too.
        options = dict(cfg.train.bio_mirror)
        options.pop("period")
        for name, layer in mirror_layers(model):
            w = layer.weight.detach().flatten()

            def cosine():
                return torch.nn.functional.cosine_similarity(
                    layer.feedback.flatten(), w, dim=0
                ).item()

            start = cosine()
            for step in range(4):
                mirror_step(layer, shapes.shapes[name], std=1.0, step=step, **options)
            assert cosine() > max(start + 0.3, 0.5), (name, start, cosine())


@pytest.mark.slow
def test_the_lazy_tool_trains_and_evaluates_a_vitdet_config(tmp_path):
    out = str(tmp_path)
    command = [
        sys.executable,
        os.path.join(REPO, "tools", "lazyconfig_train_net.py"),
        "--config-file",
        path(DATASETS[0], "direct_feedback_alignment"),
        "train.max_iter=3",
        "train.amp.enabled=False",
        "train.bio_alignment_period=2",
        "train.log_period=1",
        "dataloader.train.dataset.names=shapes_train_mini",
        "dataloader.test.dataset.names=shapes_val_mini",
        "dataloader.train.total_batch_size=2",
        "model.model.max_detections_per_image=20",
        # Three iterations leave every score near the head's prior, 0.01: keep them all, so that
        # the evaluation scores detections.
        "model.model.test_score_thresh=0.0",
        f"train.output_dir={out}",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-4000:]
    for f in ("model_final.pth", "metrics.json", "inference/coco_instances_results.json"):
        assert os.path.exists(os.path.join(out, f)), f
    with open(os.path.join(out, "metrics.json")) as f:
        metrics = [json.loads(line) for line in f]
    losses = [m["total_loss"] for m in metrics if "total_loss" in m]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    # Alignment metrics of every layer, the ViT's projections included.
    logged = [m for m in metrics if "alignment/backbone.net.blocks.5.attn.qkv/grad_angle" in m]
    assert logged and sum(k.endswith("/grad_angle") for k in logged[0]) == 40 + 2
    final = [m for m in metrics if "bbox/AP" in m]
    assert final and 0 <= final[-1]["bbox/AP"] <= 100
    ckpt = torch.load(os.path.join(out, "model_final.pth"), weights_only=False)
    assert ckpt["iteration"] == 2
    assert ckpt["model"]["backbone.net.blocks.0.attn.qkv.feedback"].shape == (192, 9 * (3 + 4))

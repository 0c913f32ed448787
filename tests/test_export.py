"""Leaving bio_detectron: stock configs and checkpoints (tools/export_model.py), and tracing/export
of converted models, which must give the stock graphs."""

import copy
import json
import os
import subprocess
import sys

import pytest
import torch
import torchvision
import yaml
from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model

import bio_detectron as bd
from bio_detectron import add_bio_config
from bio_detectron.export import load_weights, stock_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INSTANT = os.path.join(
    REPO, "configs/quick_schedules/retinanet_R_18_FPN_sign_symmetry_instant_test.yaml"
)
sys.path.insert(0, os.path.join(REPO, "tools"))


def instant_cfg(*opts):
    cfg = get_cfg()
    add_bio_config(cfg)
    cfg.merge_from_file(INSTANT)
    cfg.merge_from_list(list(opts))
    return cfg


# --- the stock config ------------------------------------------------------------------------


def _merges_into_stock_get_cfg(stock, tmp_path):
    """A config with any key stock detectron2 lacks fails to merge into get_cfg()."""
    path = tmp_path / "stock.yaml"
    path.write_text(stock.dump())
    plain = get_cfg()
    plain.merge_from_file(str(path))
    return plain


def test_stock_config_of_bio_retinanet(tmp_path):
    cfg = instant_cfg()
    stock = stock_config(cfg)
    assert stock.MODEL.META_ARCHITECTURE == "RetinaNet"
    assert stock.MODEL.BACKBONE.NAME == "build_retinanet_resnet_fpn_backbone"
    assert "BIO" not in stock.MODEL and "HEAD_NAME" not in stock.MODEL.RETINANET
    assert "BIO" in cfg.MODEL and cfg.MODEL.META_ARCHITECTURE == "BioRetinaNet"  # untouched
    plain = _merges_into_stock_get_cfg(stock, tmp_path)
    # Everything else is the training config's.
    assert plain.MODEL.RETINANET.NUM_CONVS == 2 and plain.MODEL.FPN.NORM == "GN"
    assert plain.INPUT.MIN_SIZE_TEST == 96 and plain.INPUT.FORMAT == "RGB"
    # Stock RetinaNet with those keys has exactly the converted model's state-dict keys.
    bio_keys = {k for k in build_model(cfg).state_dict() if not k.endswith(".feedback")}
    assert set(build_model(plain).state_dict()) == bio_keys


def test_stock_config_of_bio_plausible(tmp_path):
    from detectron2 import model_zoo

    cfg = get_cfg()
    add_bio_config(cfg)
    cfg.merge_from_file(model_zoo.get_config_file("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"))
    cfg.MODEL.META_ARCHITECTURE = "BioPlausible"
    cfg.MODEL.BIO.BASE_META_ARCHITECTURE = "GeneralizedRCNN"
    stock = stock_config(cfg)
    assert stock.MODEL.META_ARCHITECTURE == "GeneralizedRCNN"
    assert stock.MODEL.BACKBONE.NAME == "build_resnet_fpn_backbone"  # stock already
    _merges_into_stock_get_cfg(stock, tmp_path)
    # BioPlausible around BioRetinaNet with the bio ResNet backbone: both names mapped.
    cfg = instant_cfg(
        "MODEL.META_ARCHITECTURE",
        "BioPlausible",
        "MODEL.BIO.BASE_META_ARCHITECTURE",
        "BioRetinaNet",
    )
    cfg.MODEL.BACKBONE.NAME = "build_bio_resnet_backbone"
    stock = stock_config(cfg)
    assert (stock.MODEL.META_ARCHITECTURE, stock.MODEL.BACKBONE.NAME) == (
        "RetinaNet",
        "build_resnet_backbone",
    )


def test_stock_config_reads_stock_names_off_the_registered_builders():
    # No table of names: a thin builder (a stock module, converted by the meta-architecture)
    # carries the name of detectron2's builder, whoever registered it.
    from detectron2.modeling import BACKBONE_REGISTRY
    from detectron2.modeling.backbone.resnet import build_resnet_backbone

    def build_my_thin_resnet(cfg, input_shape):
        return build_resnet_backbone(cfg, input_shape)

    build_my_thin_resnet.__module__ = "bio_detectron.tests_only"
    if "build_my_thin_resnet" not in BACKBONE_REGISTRY:  # registries cannot unregister
        BACKBONE_REGISTRY.register(build_my_thin_resnet)
    builder = BACKBONE_REGISTRY.get("build_my_thin_resnet")
    builder.stock_name = "build_resnet_backbone"
    stock = stock_config(instant_cfg("MODEL.BACKBONE.NAME", "build_my_thin_resnet"))
    assert stock.MODEL.BACKBONE.NAME == "build_resnet_backbone"
    del builder.stock_name
    with pytest.raises(ValueError, match="'build_my_thin_resnet' is built by bio_detectron"):
        stock_config(instant_cfg("MODEL.BACKBONE.NAME", "build_my_thin_resnet"))


def test_stock_config_refuses_what_has_no_stock_counterpart():
    with pytest.raises(ValueError, match="MODEL.RETINANET.HEAD_NAME='MyHead' has no stock"):
        stock_config(instant_cfg("MODEL.RETINANET.HEAD_NAME", "MyHead"))
    with pytest.raises(ValueError, match="MODEL.META_ARCHITECTURE='Nope' is not registered"):
        stock_config(
            instant_cfg(
                "MODEL.META_ARCHITECTURE",
                "BioPlausible",
                "MODEL.BIO.BASE_META_ARCHITECTURE",
                "Nope",
            )
        )
    with pytest.raises(ValueError, match="classifier config"):
        cfg = get_cfg()
        add_bio_config(cfg)
        bd.add_classification_config(cfg)
        stock_config(cfg)
    with pytest.raises(ValueError, match="no MODEL.BIO keys"):
        stock_config(get_cfg())


def test_stock_config_warns_about_keys_of_other_extensions():
    cfg = instant_cfg()
    cfg.MODEL.MY_PROJECT = CfgNode({"DEPTH": 3})
    with pytest.warns(UserWarning, match=r"\['MODEL.MY_PROJECT'\]"):
        stock = stock_config(cfg)
    assert stock.MODEL.MY_PROJECT.DEPTH == 3


@pytest.mark.slow
def test_load_weights_is_strict(tmp_path):
    torch.manual_seed(0)
    other = build_model(instant_cfg("MODEL.RETINANET.NUM_CONVS", 3))
    path = str(tmp_path / "other.pth")
    torch.save({"model": other.state_dict()}, path)
    with pytest.raises(
        ValueError, match=r"other.pth' do not fit .*unexpected keys \['head.cls_subnet.6"
    ):
        load_weights(build_model(instant_cfg()), path)
    # A checkpoint of feedback_alignment (fixed B) under a config of sign_symmetry (no state).
    fa = build_model(instant_cfg("MODEL.BIO.RULE", "feedback_alignment"))
    torch.save({"model": fa.state_dict(), "iteration": 3}, path)
    with pytest.raises(ValueError, match="feedback tensors of 34 layers whose rule in the config"):
        load_weights(build_model(instant_cfg()), path)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_weights(build_model(instant_cfg()), str(tmp_path / "nope.pth"))


# --- a trained model, exported, in stock detectron2 -------------------------------------------

# Runs DefaultPredictor in a fresh process on a config and images; with "bio", bio_detectron is
# imported first (the converted model), without it never.
PREDICT = r"""
import json, sys, torch
from detectron2.config import get_cfg
from detectron2.data.detection_utils import read_image
from detectron2.engine import DefaultPredictor
config, opts, images = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
out, bio = sys.argv[4], sys.argv[5] == "bio"
cfg = get_cfg()
if bio:
    import bio_detectron
    bio_detectron.add_bio_config(cfg)
cfg.merge_from_file(config)
cfg.merge_from_list(opts)
predictor = DefaultPredictor(cfg)
results = []
for path in images:
    inst = predictor(read_image(path, format="BGR"))["instances"]
    results.append((inst.pred_boxes.tensor, inst.scores, inst.pred_classes))
report = {"results": results, "model": type(predictor.model).__name__,
          "classes": sorted({type(m).__module__ for m in predictor.model.modules()})}
if bio:
    report["rules"] = sorted(set(bio_detectron.rules_of(predictor.model).values()))
else:
    state = torch.load(cfg.MODEL.WEIGHTS, weights_only=True)["model"]
    predictor.model.load_state_dict(state, strict=True)  # raises on any key mismatch
report["bio_detectron_imported"] = any(m.split(".")[0] == "bio_detectron" for m in sys.modules)
torch.save(report, out)
"""


def _predict(tmp_path, config, opts, images, bio):
    out = str(tmp_path / f"predictions_{bio}.pt")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run(
        [sys.executable, "-c", PREDICT, config, json.dumps(opts), json.dumps(images), out, bio],
        check=True,
        env=env,
        cwd=str(tmp_path),
    )
    return torch.load(out, weights_only=False)


@pytest.mark.slow
def test_trained_model_exports_to_stock_detectron2(tmp_path):
    import export_model
    import train_net
    from detectron2.engine import default_argument_parser

    out = str(tmp_path / "train")
    train_opts = ["MODEL.BIO.RULE", "feedback_alignment", "MODEL.BIO.ALIGNMENT.PERIOD", "0"]
    train_net.main(
        default_argument_parser().parse_args(
            [
                "--config-file",
                INSTANT,
                *train_opts,
                "SOLVER.MAX_ITER",
                "2",
                "DATASETS.TEST",
                "()",
                "OUTPUT_DIR",
                out,
            ]
        )
    )
    weights = os.path.join(out, "model_final.pth")
    assert any(k.endswith(".feedback") for k in torch.load(weights, weights_only=True)["model"])

    # Every box the head proposes (score threshold 0), so the comparison is not of empty lists.
    opts = train_opts + ["MODEL.RETINANET.SCORE_THRESH_TEST", "0.0"]
    exported = str(tmp_path / "exported")
    paths = export_model.main(
        export_model.parse_args(
            ["--config-file", INSTANT, "--weights", weights, "--output", exported, *opts]
        )
    )
    assert paths == {
        "config": os.path.join(exported, "config.yaml"),
        "weights": os.path.join(exported, "model_final.pth"),
    }
    raw = yaml.safe_load(open(paths["config"]))
    assert raw["MODEL"]["META_ARCHITECTURE"] == "RetinaNet"
    assert raw["MODEL"]["BACKBONE"]["NAME"] == "build_retinanet_resnet_fpn_backbone"
    assert "BIO" not in raw["MODEL"] and "HEAD_NAME" not in raw["MODEL"]["RETINANET"]
    assert raw["MODEL"]["WEIGHTS"] == paths["weights"]
    state = torch.load(paths["weights"], weights_only=True)["model"]
    assert not any("feedback" in k for k in state)

    images = [d["file_name"] for d in DatasetCatalog.get("shapes_val_mini")[:4]]
    stock = _predict(tmp_path, paths["config"], [], images, "stock")
    converted = _predict(tmp_path, INSTANT, opts + ["MODEL.WEIGHTS", weights], images, "bio")
    assert not stock["bio_detectron_imported"] and converted["bio_detectron_imported"]
    assert stock["model"] == converted["model"] == "RetinaNet"
    assert not any(c.startswith("bio_detectron") for c in stock["classes"])
    assert converted["rules"] == ["feedback_alignment"]
    assert len(stock["results"]) == 4
    for (b1, s1, c1), (b2, s2, c2) in zip(stock["results"], converted["results"]):
        assert 10 <= len(s1) <= 20  # TEST.DETECTIONS_PER_IMAGE, after NMS
        assert torch.equal(b1, b2) and torch.equal(s1, s2) and torch.equal(c1, c2)


# --- tracing and torch.export: the stock graphs ----------------------------------------------


def _d2_resnet():
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.backbone import build_resnet_backbone

    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res3", "res4", "res5"]
    return build_resnet_backbone(cfg, ShapeSpec(channels=3))


MODELS = {"torchvision_resnet18": torchvision.models.resnet18, "detectron2_resnet18": _d2_resnet}


def _converted_and_stock(name, rule):
    torch.manual_seed(0)
    stock = MODELS[name]().eval()
    model = bd.convert_model(copy.deepcopy(stock), rule)
    # A training step makes the rule's state and moves the weights; the stock model gets them.
    model.train()
    sum(o.float().mean() for o in _outputs(model(torch.randn(2, 3, 64, 64)))).backward()
    model.eval()
    stock.load_state_dict(model.state_dict(), strict=False)
    return model, stock


def _outputs(out):
    return list(out.values()) if isinstance(out, dict) else [out]


def _kinds(traced):
    return [node.kind() for node in traced.inlined_graph.nodes()]


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("rule", ["sign_symmetry", "feedback_alignment"])
def test_jit_trace_gives_the_stock_graph(name, rule):
    model, stock = _converted_and_stock(name, rule)
    x = torch.randn(2, 3, 64, 64)
    traced, traced_stock = (torch.jit.trace(m, x, strict=False) for m in (model, stock))
    kinds = _kinds(traced)
    assert "prim::PythonOp" not in kinds  # what a custom autograd Function traces to
    assert kinds == _kinds(traced_stock)
    with torch.no_grad():
        for a, b in zip(_outputs(traced(x)), _outputs(stock(x))):
            assert torch.equal(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_torch_export_gives_the_stock_graph(name):
    model, stock = _converted_and_stock(name, "feedback_alignment")
    x = torch.randn(2, 3, 64, 64)
    program, stock_program = (torch.export.export(m, (x,)) for m in (model, stock))

    def ops(p):
        return [str(n.target) for n in p.graph.nodes if n.op == "call_function"]

    assert ops(program) == ops(stock_program)
    assert all(t.startswith("aten.") or t.startswith("<built-in function") for t in ops(program))
    for a, b in zip(_outputs(program.module()(x)), _outputs(stock(x))):
        assert torch.equal(a, b)
    # The rule's fixed B rides along as unused buffers; reverted, the program is the stock one.
    extra = set(program.state_dict) - set(stock_program.state_dict)
    assert extra and all(k.endswith(".feedback") for k in extra)
    reverted = torch.export.export(bd.revert_model(model), (x,))
    assert set(reverted.state_dict) == set(stock_program.state_dict)
    assert ops(reverted) == ops(stock_program)


@pytest.mark.slow
def test_retinanet_traces_through_tracing_adapter_like_stock():
    from detectron2.export import TracingAdapter

    cfg = instant_cfg(
        "MODEL.BIO.RULE", "feedback_alignment", "MODEL.RETINANET.SCORE_THRESH_TEST", 0.0
    )
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    stock = build_model(stock_config(cfg)).eval()
    stock.load_state_dict(model.state_dict(), strict=False)
    inputs = [{"image": torch.rand(3, 96, 96) * 255}]
    traced = {}
    for key, m in (("bio", model), ("stock", stock)):
        adapter = TracingAdapter(m, inputs)
        traced[key] = (adapter, torch.jit.trace(adapter, adapter.flattened_inputs))
    kinds = _kinds(traced["bio"][1])
    assert "prim::PythonOp" not in kinds and kinds == _kinds(traced["stock"][1])
    adapter, fn = traced["bio"]
    outputs = fn(*adapter.flattened_inputs)
    with torch.no_grad():
        expected = stock(inputs)[0]["instances"]
    assert len(expected) == 20
    result = adapter.outputs_schema(outputs)[0]["instances"]
    assert torch.equal(result.pred_boxes.tensor, expected.pred_boxes.tensor)
    assert torch.equal(result.scores, expected.scores)

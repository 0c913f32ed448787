"""LazyConfig: bio_plausible in Python configs, Detectron2's own model zoo configs trained with a
rule, this project's configs against their yacs twins, and tools/lazyconfig_train_net.py."""

import contextlib
import copy
import hashlib
import json
import logging
import os
import sys

import pytest
import torch
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.config import LazyConfig, get_cfg, instantiate
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from detectron2.modeling.meta_arch import RetinaNet
from detectron2.utils import comm
from detectron2.utils.events import EventStorage
from torch import nn

import bio_detectron as bd
from bio_detectron import add_bio_config
from bio_detectron.engine.lazy import (
    LAZY_ADVICE,
    LazyTrainer,
    build_lazy_trainer,
    load_lazy_config,
)
from bio_detectron.solver import schedule_weight_decay

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")
QUICK = "quick_schedules/retinanet_R_18_FPN_sign_symmetry_instant_test"
sys.path.insert(0, os.path.join(REPO, "tools"))


def _decay(cfg):
    """The optimizer's weight decay, made (for a decay that follows train.max_iter) or as set."""
    decay = cfg.optimizer.weight_decay
    return instantiate(decay) if hasattr(decay, "keys") and "_target_" in decay else decay


def lazy(name, *opts):
    """One of this project's LazyConfigs, e.g. "COCO-Detection/retinanet_R_18_FPN_backprop_1x"."""
    return LazyConfig.apply_overrides(LazyConfig.load(os.path.join(CONFIGS, name + ".py")), opts)


def yacs(name, *opts):
    cfg = get_cfg()
    add_bio_config(cfg)
    cfg.merge_from_file(os.path.join(CONFIGS, name + ".yaml"))
    cfg.merge_from_list(list(opts))
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def layer_names(model):
    return {
        n for n, m in model.named_modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))
    }


@pytest.fixture(scope="module")
def batch():
    """Two 96 px images of shapes_train_mini with boxes, classes and polygon masks."""
    mapper = DatasetMapper(
        is_train=True,
        augmentations=[T.ResizeShortestEdge(96, 96)],
        image_format="BGR",
        use_instance_mask=True,
    )
    batch = [mapper(copy.deepcopy(d)) for d in DatasetCatalog.get("shapes_train_mini")[:2]]
    assert all(b["instances"].has("gt_masks") for b in batch)
    return batch


def _losses(model, batch):
    model.train()
    with EventStorage():
        return model(batch)


# ------------------------------------------------------------------------------------------------
# bio_plausible in a LazyConfig
# ------------------------------------------------------------------------------------------------


def test_instantiate_builds_the_inner_model_then_converts_it_by_parts():
    cfg = lazy(QUICK)
    cfg.model.parts = {"head": "backprop", "PREDICTOR": "feedback_alignment"}
    model = instantiate(cfg.model)
    assert type(model) is RetinaNet  # the inner model itself: stock state-dict keys
    rules = bd.rules_of(model)
    assert set(rules) == layer_names(model) and len(rules) == 20 + 8 + 6
    by_part = {}
    for name, part in bd.modeling.parts.parts_of(model).items():
        by_part.setdefault(part, set()).add(rules[name])
    assert by_part == {
        "backbone": {"sign_symmetry"},
        "fpn": {"sign_symmetry"},
        "head": {"backprop"},
        "predictor": {"feedback_alignment"},
    }
    assert rules["head.cls_score"] == rules["head.bbox_pred"] == "feedback_alignment"
    assert model.backbone.bottom_up.stem.conv1.learning_rule.scale == "mean_abs"
    assert model.head.cls_score.learning_rule.scale == "mean_abs"


# (bio_plausible keyword arguments, the same setting as MODEL.BIO options, the message with
# {key} where the message names the argument or the config key)
BAD = [
    (
        {"rule": "sign-symmetry"},
        ["MODEL.BIO.RULE", "sign-symmetry"],
        ("rule", "MODEL.BIO.RULE"),
        "{key}='sign-symmetry' is not a learning rule; allowed: [",
    ),
    (
        {"parts": {"head": "fa"}},
        ["MODEL.BIO.PARTS.HEAD", "fa"],
        ("parts.head", "MODEL.BIO.PARTS.HEAD"),
        "{key}='fa' is not a learning rule",
    ),
    (
        {"scale": "huge"},
        ["MODEL.BIO.SCALE", "huge"],
        ("scale", "MODEL.BIO.SCALE"),
        "{key}='huge' is not allowed",
    ),
    (
        {"exclude": ["roi_heads"]},
        ["MODEL.BIO.EXCLUDE", ["roi_heads"]],
        ("exclude", "MODEL.BIO.EXCLUDE"),
        "{key}[0]='roi_heads' matches no convolution/Linear layer",
    ),
    (
        {"exclude": ["(stem"]},
        ["MODEL.BIO.EXCLUDE", ["(stem"]],
        ("exclude", "MODEL.BIO.EXCLUDE"),
        "{key}[0]='(stem' is not a valid regular expression",
    ),
    (
        {"unsupported": "ignore"},
        ["MODEL.BIO.UNSUPPORTED", "ignore"],
        ("unsupported", "MODEL.BIO.UNSUPPORTED"),
        "{key}='ignore' is not allowed; use one of",
    ),
]


@pytest.mark.parametrize(
    "kwargs,opts,keys,message", BAD, ids=[b[2][0] + "-" + str(i) for i, b in enumerate(BAD)]
)
def test_bad_arguments_get_the_errors_of_model_bio(kwargs, opts, keys, message):
    cfg = lazy(QUICK)
    for k, v in kwargs.items():
        cfg.model[k] = v
    with pytest.raises(ValueError) as lazy_error:
        instantiate(cfg.model)
    with pytest.raises(ValueError) as yacs_error:
        build_model(yacs(QUICK, *opts))
    assert message.format(key=keys[0]) in str(lazy_error.value)
    assert message.format(key=keys[1]) in str(yacs_error.value)
    # Beyond the key, the same words: both convert the whole model in the same one pass.
    tail = str(yacs_error.value).split(keys[1], 1)[1].split(" of ")[0]
    assert tail in str(lazy_error.value)


def test_bad_arguments_only_in_python_are_named():
    cfg = lazy(QUICK)
    cfg.model.parts = {"neck": "backprop"}
    with pytest.raises(ValueError, match=r"parts has unknown part\(s\) \['neck'\]; the parts are"):
        instantiate(cfg.model)
    cfg = lazy(QUICK, "model.seed=1.5")
    with pytest.raises(ValueError, match="seed=1.5 must be an integer"):
        instantiate(cfg.model)
    with pytest.raises(TypeError, match="needs a built model, got a DictConfig"):
        bd.bio_plausible(lazy(QUICK).model.model, "sign_symmetry")


# ------------------------------------------------------------------------------------------------
# Detectron2's own LazyConfigs, one training step with sign-symmetry
# ------------------------------------------------------------------------------------------------


def _vitdet_small(cfg):
    net = cfg.model.backbone.net
    net.depth, net.embed_dim, net.num_heads, net.img_size = 2, 64, 2, 128
    cfg.model.backbone.square_pad = 128
    _three_roi_classes(cfg)


def _three_classes(cfg):
    cfg.model.num_classes = 3


def _three_roi_classes(cfg):
    cfg.model.roi_heads.num_classes = 3
    # 32 sampled proposals per image instead of 512: the 4-conv box head and the mask head run on
    # each; a step takes about a second on one CPU thread instead of twenty.
    cfg.model.roi_heads.batch_size_per_image = 32


ZOO = [
    (
        "COCO-Detection/retinanet_R_50_FPN_1x.py",
        _three_classes,
        "backbone.bottom_up.res5.0.conv1.weight",
    ),
    (
        "COCO-Detection/fcos_R_50_FPN_1x.py",
        _three_classes,
        "backbone.bottom_up.res5.0.conv1.weight",
    ),
    (
        "new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py",
        _three_roi_classes,
        "backbone.bottom_up.res5.0.conv1.weight",
    ),
    ("common/models/mask_rcnn_vitdet.py", _vitdet_small, "backbone.net.blocks.1.attn.qkv.weight"),
]


@pytest.mark.slow
@pytest.mark.parametrize("config,edit,weight", ZOO, ids=[z[0].split("/")[-1][:-3] for z in ZOO])
def test_model_zoo_lazy_config_trains_a_step_through_bio_plausible(batch, config, edit, weight):
    cfg = model_zoo.get_config(config)  # Detectron2's installed file, not a copy
    edit(cfg)
    torch.manual_seed(0)
    model = instantiate(L(bd.bio_plausible)(model=cfg.model, rule="sign_symmetry"))
    rules = bd.rules_of(model)
    assert set(rules) == layer_names(model) and len(rules) > 30
    assert set(rules.values()) == {"sign_symmetry"}, {
        k: v for k, v in rules.items() if v != "sign_symmetry"
    }
    w = dict(model.named_parameters())[weight]
    before = w.detach().clone()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    losses = _losses(model, batch)
    if "mask_rcnn" in config:
        assert "loss_mask" in losses
    assert all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    assert w.grad is not None and w.grad.abs().sum() > 0
    opt.step()
    assert not torch.equal(before, w.detach())


# ------------------------------------------------------------------------------------------------
# This project's LazyConfigs are their yacs twins
# ------------------------------------------------------------------------------------------------

TWINS = [
    ("COCO-Detection/retinanet_R_18_FPN_sign_symmetry_1x", True),
    ("COCO-Detection/retinanet_R_50_FPN_feedback_alignment_1x", False),
    (QUICK, True),
    ("Shapes-Detection/retinanet_R_18_FPN_sign_symmetry", False),
]


@pytest.mark.slow
def test_sign_symmetry_recipe_keeps_the_predictors_on_backprop():
    """The Shapes (so Textures and Photos) sign_symmetry recipe: only the predictors on backprop."""
    for name in ("Shapes-Detection", "Textures-Detection", "Photos-Detection"):
        ymodel = build_model(yacs(f"{name}/retinanet_R_18_FPN_sign_symmetry"))
        rules = bd.rules_of(ymodel)
        on_backprop = sorted(n for n, r in rules.items() if r == "backprop")
        assert on_backprop == ["head.bbox_pred", "head.cls_score"], (name, on_backprop)
        assert len(rules) > 30 and set(rules.values()) == {"sign_symmetry", "backprop"}


@pytest.mark.slow
@pytest.mark.parametrize("name,forward", TWINS, ids=[t[0].split("/")[-1] for t in TWINS])
def test_lazy_config_builds_the_model_of_its_yacs_twin(batch, name, forward):
    cfg, ycfg = lazy(name), yacs(name)
    # The yaml writes the anchor sizes 2^(i/3) x {32, ...} to two decimals; detectron2's
    # retinanet.py computes them. The same anchors, then the same model.
    sizes, ysizes = cfg.model.model.anchor_generator.sizes, ycfg.MODEL.ANCHOR_GENERATOR.SIZES
    assert torch.allclose(torch.tensor(sizes), torch.tensor(ysizes), atol=0.005, rtol=0)
    cfg.model.model.anchor_generator.sizes = [list(s) for s in ysizes]
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    ymodel = build_model(ycfg)
    state, ystate = model.state_dict(), ymodel.state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == {
        k: tuple(v.shape) for k, v in ystate.items()
    }
    assert bd.rules_of(model) == bd.rules_of(ymodel)
    rule = model.head.cls_subnet[0].learning_rule
    assert repr(rule) == repr(ymodel.head.cls_subnet[0].learning_rule)
    if forward:  # same weights, same batch: same losses (anchors, box loss, input normalisation)
        ymodel.load_state_dict(state)
        torch.manual_seed(1)
        losses = _losses(model, batch)
        torch.manual_seed(1)
        ylosses = _losses(ymodel, batch)
        assert {k: v.item() for k, v in losses.items()} == {k: v.item() for k, v in ylosses.items()}
    # The data and schedule settings the yacs config sets.
    s, t = ycfg.SOLVER, cfg.dataloader.train
    assert (cfg.optimizer.lr, _decay(cfg), cfg.optimizer.momentum) == (
        s.BASE_LR,
        schedule_weight_decay(ycfg).SOLVER.WEIGHT_DECAY,
        s.MOMENTUM,
    )
    assert (t.total_batch_size, cfg.train.max_iter) == (s.IMS_PER_BATCH, s.MAX_ITER)
    assert tuple(t.mapper.augmentations[0].short_edge_length) == tuple(ycfg.INPUT.MIN_SIZE_TRAIN)
    assert t.mapper.image_format == cfg.dataloader.test.mapper.image_format == ycfg.INPUT.FORMAT
    assert (t.dataset.names, cfg.dataloader.evaluator.dataset_name) == (
        ycfg.DATASETS.TRAIN[0],
        ycfg.DATASETS.TEST[0],
    )
    assert cfg.train.init_checkpoint == ycfg.MODEL.WEIGHTS
    assert cfg.train.output_dir == ycfg.OUTPUT_DIR


@pytest.mark.parametrize("depth", [18, 50])
@pytest.mark.parametrize("rule", ["backprop", "sign_symmetry", "feedback_alignment"])
def test_coco_configs_set_rule_scale_and_weights_as_the_yacs_ones(depth, rule):
    name = f"COCO-Detection/retinanet_R_{depth}_FPN_{rule}_1x"
    cfg, ycfg = lazy(name), yacs(name)
    assert (cfg.model.rule, cfg.model.get("scale", "kaiming")) == (
        ycfg.MODEL.BIO.RULE,
        ycfg.MODEL.BIO.SCALE,
    )
    assert cfg.model.model.backbone.bottom_up.stages.depth == ycfg.MODEL.RESNETS.DEPTH
    assert (cfg.train.init_checkpoint, cfg.train.output_dir) == (
        ycfg.MODEL.WEIGHTS,
        ycfg.OUTPUT_DIR,
    )


@pytest.mark.slow
def test_classifier_checkpoint_initialises_the_lazy_resnet18_backbone(tmp_path):
    from detectron2.checkpoint import DetectionCheckpointer

    from bio_detectron import add_classification_config
    from bio_detectron.modeling.classification import build_classifier

    # A checkpoint as tools/train_imagenet.py writes it (its ResNet is backbone.bottom_up.*).
    ccfg = get_cfg()
    add_bio_config(ccfg)
    add_classification_config(ccfg)
    ccfg.merge_from_file(os.path.join(CONFIGS, "ImageNet/resnet18_feedback_alignment.yaml"))
    ccfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(0)
    classifier = bd.make_feedback_now(build_classifier(ccfg, num_classes=10))
    DetectionCheckpointer(classifier, str(tmp_path)).save("model_final")
    checkpoint = torch.load(tmp_path / "model_final.pth", weights_only=False)["model"]

    # The classifier's scale, so that its feedback weights are restored rather than remade.
    path = tmp_path / "model_final.pth"
    cfg = lazy(
        "COCO-Detection/retinanet_R_18_FPN_feedback_alignment_1x",
        "model.scale=kaiming",
        f"train.init_checkpoint={path}",
    )
    torch.manual_seed(1)
    detector = instantiate(cfg.model)
    DetectionCheckpointer(detector).load(cfg.train.init_checkpoint)
    bottom_up = {
        k: v for k, v in detector.state_dict().items() if k.startswith("backbone.bottom_up.")
    }
    assert len(bottom_up) > 100 and set(bottom_up) <= set(checkpoint)
    assert sum(k.endswith(".feedback") for k in bottom_up) == 20
    for k, v in bottom_up.items():  # parameters, BN statistics, feedback buffers
        assert torch.equal(v, checkpoint[k]), k


def test_shapes_configs_match_the_demo_schedule():
    for rule in ("backprop", "sign_symmetry", "feedback_alignment"):
        name = f"Shapes-Detection/retinanet_R_18_FPN_{rule}"
        cfg, ycfg = lazy(name), yacs(name)
        assert (cfg.model.rule, cfg.model.get("scale", "kaiming")) == (
            ycfg.MODEL.BIO.RULE,
            ycfg.MODEL.BIO.SCALE,
        )
        assert cfg.train.output_dir == ycfg.OUTPUT_DIR
    s = ycfg.SOLVER
    assert (cfg.optimizer.lr, cfg.optimizer.params.weight_decay_bias) == (
        s.BASE_LR,
        s.WEIGHT_DECAY_BIAS,
    )
    # The decay of the configured length (0.05 at 800), and of longer runs, which follow it alike.
    assert _decay(cfg) == schedule_weight_decay(ycfg).SOLVER.WEIGHT_DECAY == 0.05
    for max_iter, decay in ((1600, 0.025), (3200, 0.0125)):
        longer, ylonger = copy.deepcopy(cfg), ycfg.clone()
        longer.train.max_iter = ylonger.SOLVER.MAX_ITER = max_iter
        assert _decay(longer) == schedule_weight_decay(ylonger).SOLVER.WEIGHT_DECAY == decay
    assert (cfg.train.max_iter, cfg.dataloader.train.total_batch_size) == (
        s.MAX_ITER,
        s.IMS_PER_BATCH,
    )
    assert cfg.train.bio_alignment_period == ycfg.MODEL.BIO.ALIGNMENT.PERIOD
    # The learning rate over the run, from the schedulers themselves.
    from detectron2.solver import build_lr_scheduler

    params = [nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.SGD(params, lr=s.BASE_LR)
    yacs_sched = build_lr_scheduler(ycfg, optimizer)
    optimizer.step()  # training's order (no gradient: nothing moves), which torch checks
    multiplier = instantiate(cfg.lr_multiplier)
    for it in range(s.MAX_ITER):
        assert multiplier(it / s.MAX_ITER) * s.BASE_LR == pytest.approx(
            yacs_sched.get_last_lr()[0]
        ), it
        yacs_sched.step()


# ------------------------------------------------------------------------------------------------
# tools/lazyconfig_train_net.py
# ------------------------------------------------------------------------------------------------


def _args(*opts, config=QUICK, **kw):
    from detectron2.engine import default_argument_parser

    args = default_argument_parser().parse_args(
        ["--config-file", os.path.join(CONFIGS, config + ".py"), *map(str, opts)]
    )
    for k, v in kw.items():
        setattr(args, k, v)
    return args


def _metrics(out):
    with open(os.path.join(out, "metrics.json")) as f:
        return [json.loads(line) for line in f]


@pytest.mark.slow
def test_lazy_tool_trains_evaluates_resumes_and_evaluates_only(tmp_path):
    import lazyconfig_train_net as tool

    out = str(tmp_path)
    results = tool.main(_args("model.rule=feedback_alignment", f"train.output_dir={out}"))
    assert set(results["bbox"]) >= {"AP", "AP50", "AP75"} and 0 <= results["bbox"]["AP"] <= 100
    for f in (
        "model_0000001.pth",
        "model_0000003.pth",
        "model_final.pth",
        "last_checkpoint",
        "metrics.json",
        "config.yaml",
        "inference/coco_instances_results.json",
    ):
        assert os.path.exists(os.path.join(out, f)), f
    ckpt = torch.load(os.path.join(out, "model_final.pth"), weights_only=False)
    assert ckpt["iteration"] == 3 and "optimizer" in ckpt["trainer"]["_trainer"]
    B = ckpt["model"]["head.cls_subnet.0.feedback"]

    # train.bio_alignment_period 2: alignment scalars at iterations 1 and 3, of every layer.
    logged = {
        m["iteration"]: m for m in _metrics(out) if any(k.startswith("alignment/") for k in m)
    }
    assert sorted(logged) == [1, 3]
    for m in logged.values():
        assert sum(k.endswith("/grad_angle") for k in m) == 34 + 2  # every layer, "mean", "all"
        # The last layers' gradients are exact whatever the rule; a random B is far from W.
        assert m["alignment/head.cls_score/grad_angle"] < 1e-3
        assert m["alignment/backbone.bottom_up.res4.0.conv1/weight_angle"] > 60

    # --resume: continues after iteration 3 with the feedback weights of the checkpoint, not the
    # ones another seed would make; the alignment hook is off with period 0.
    fresh = instantiate(lazy(QUICK, "model.rule=feedback_alignment", "model.seed=5").model)
    assert not torch.equal(bd.make_feedback_now(fresh).head.cls_subnet[0].feedback, B)
    results = tool.main(
        _args(
            "model.rule=feedback_alignment",
            "model.seed=5",
            "train.max_iter=6",
            "train.bio_alignment_period=0",
            f"train.output_dir={out}",
            resume=True,
        )
    )
    ckpt = torch.load(os.path.join(out, "model_final.pth"), weights_only=False)
    assert ckpt["iteration"] == 5
    assert torch.equal(ckpt["model"]["head.cls_subnet.0.feedback"], B)
    resumed = [m for m in _metrics(out) if m["iteration"] >= 4]
    assert {m["iteration"] for m in resumed} >= {5}
    assert not any(k.startswith("alignment/") for m in resumed for k in m)

    # --eval-only: the saved model gives the final evaluation again.
    final = os.path.join(out, "model_final.pth")
    again = tool.main(
        _args(f"train.init_checkpoint={final}", f"train.output_dir={out}", eval_only=True)
    )
    assert again["bbox"] == pytest.approx(results["bbox"], nan_ok=True)
    again = tool.main(_args(f"train.output_dir={out}", eval_only=True, resume=True))
    assert again["bbox"] == pytest.approx(results["bbox"], nan_ok=True)
    with pytest.raises(ValueError, match="--eval-only needs weights: set train.init_checkpoint"):
        tool.main(_args(f"train.output_dir={tmp_path / 'empty'}", eval_only=True))


@pytest.mark.slow
def test_lazy_tool_stops_a_diverging_run_with_checkpoint_intact(tmp_path):
    import lazyconfig_train_net as tool

    out = str(tmp_path)
    with pytest.raises(FloatingPointError) as e:
        tool.main(
            _args(
                "optimizer.lr=1e9",
                "train.max_iter=20",
                "train.checkpointer.period=1",
                "train.bio_alignment_period=0",
                f"train.output_dir={out}",
            )
        )
    msg = str(e.value)
    assert "Loss became non-finite at iteration" in msg and "before the optimizer step" in msg
    assert msg.endswith(LAZY_ADVICE)
    last = open(os.path.join(out, "last_checkpoint")).read().strip()
    assert last in msg
    state = torch.load(os.path.join(out, last), weights_only=False)["model"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


@contextlib.contextmanager
def _listening(caplog, name):
    """caplog for logger ``name``: the tools' logger setup stops propagation at "bio_detectron"."""
    log = logging.getLogger(name)
    log.addHandler(caplog.handler)
    try:
        yield
    finally:
        log.removeHandler(caplog.handler)


def test_bad_alignment_period_and_missing_cuda_are_named(monkeypatch):
    with pytest.raises(ValueError, match=r"train.bio_alignment_period=-1: must be an integer >= 0"):
        load_lazy_config(os.path.join(CONFIGS, QUICK + ".py"), ["train.bio_alignment_period=-1"])
    assert load_lazy_config(os.path.join(CONFIGS, QUICK + ".py"), ["train.bio_alignment_period=0"])
    # A machine without CUDA: train.device "cuda" is an error that says how to choose the CPU.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    message = r"train.device='cuda', but CUDA is not available.*add train.device=cpu$"
    with pytest.raises(ValueError, match=message):
        load_lazy_config(os.path.join(CONFIGS, QUICK + ".py"), ["train.device=cuda"])
    cfg = load_lazy_config(os.path.join(CONFIGS, QUICK + ".py"), ["train.device=cpu"])
    assert cfg.train.device == "cpu"


@pytest.mark.parametrize("native_bf16", [True, False])
def test_amp_on_cpu_is_bfloat16_where_native_else_full_precision_with_a_warning(
    native_bf16, caplog, tmp_path, monkeypatch
):
    from detectron2.engine import SimpleTrainer

    from bio_detectron.engine import amp

    monkeypatch.setattr(amp, "cpu_has_native_bfloat16", lambda: native_bf16)
    cfg = load_lazy_config(
        os.path.join(CONFIGS, QUICK + ".py"),
        ["train.amp.enabled=True", f"train.output_dir={tmp_path}"],
    )
    with _listening(caplog, "bio_detectron.engine.amp"):
        trainer = build_lazy_trainer(cfg)
    warned = "train.amp.enabled=True, but cpu has no native half precision" in caplog.text
    assert type(trainer) is LazyTrainer
    if native_bf16:
        assert trainer.precision is torch.bfloat16 and not warned
        assert type(trainer._trainer) is amp.CPUAutocastTrainer
    else:
        assert trainer.precision is None and warned
        assert type(trainer._trainer) is SimpleTrainer


def _train_and_gather_hashes(args, result_file):
    """One process of a distributed run: train as the tool does, then every process's digest of
    each parameter and feedback tensor, gathered on the main process."""
    import lazyconfig_train_net as tool

    def digests(model):
        tensors = dict(model.named_parameters())
        tensors.update((k, v) for k, v in model.named_buffers() if k.endswith(".feedback"))
        return {
            k: hashlib.sha256(v.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
            for k, v in tensors.items()
        }

    cfg = tool.setup(args)
    trainer = build_lazy_trainer(cfg)
    trainer.resume_or_load(resume=False)
    start = digests(trainer.unwrapped_model)  # after DDP's broadcast of rank 0's weights
    trainer.train()
    gathered = comm.all_gather(
        {"rank": comm.get_rank(), "start": start, "digests": digests(trainer.unwrapped_model)}
    )
    if comm.is_main_process():
        with open(result_file, "w") as f:
            json.dump(gathered, f)


@pytest.mark.slow
def test_two_process_cpu_launch_keeps_parameters_and_feedback_in_step(tmp_path):
    from bio_detectron.engine import launch

    out, result_file = str(tmp_path), str(tmp_path / "digests.json")
    args = _args(
        "model.rule=feedback_alignment",
        "model.scale=mean_abs",
        "train.max_iter=2",
        "train.bio_alignment_period=0",
        f"train.output_dir={out}",
        num_gpus=2,
    )
    launch(_train_and_gather_hashes, 2, dist_url="auto", args=(args, result_file))
    with open(result_file) as f:
        ranks = json.load(f)
    assert [r["rank"] for r in ranks] == [0, 1]
    first, second = ranks[0]["digests"], ranks[1]["digests"]
    assert sum(k.endswith(".feedback") for k in first) == 34  # one B per converted layer
    assert first.keys() == second.keys()
    assert [k for k in first if first[k] != second[k]] == []
    # Training changed the weights (the processes saw other images: agreement is DDP's doing).
    start = ranks[0]["start"]
    changed = [k for k in start if start[k] != first[k]]
    assert (
        "head.cls_score.weight" in changed and "backbone.bottom_up.res4.0.conv1.weight" in changed
    )
    ckpt = torch.load(os.path.join(out, "model_final.pth"), weights_only=False)
    assert ckpt["iteration"] == 1


@pytest.mark.slow
def test_weight_mirror_hook_from_train_bio_mirror(tmp_path):
    from bio_detectron.engine.mirror_hook import WeightMirrorHook

    def trainer_of(rule, mirror):
        cfg = load_lazy_config(
            os.path.join(CONFIGS, QUICK + ".py"),
            [f"model.rule={rule}", "model.seed=3", f"train.output_dir={tmp_path}"],
        )
        if mirror is not None:
            cfg.train.bio_mirror = mirror
        return build_lazy_trainer(cfg)

    trainer = trainer_of("weight_mirror", {"period": 2, "initial_steps": 1})
    (hook,) = [h for h in trainer._hooks if isinstance(h, WeightMirrorHook)]
    assert (hook.period, hook.initial_steps, hook.seed) == (2, 1, 3)
    names = [type(h).__name__ for h in trainer._hooks]
    assert names.index("WeightMirrorHook") < names.index("PeriodicCheckpointer")
    assert not any(
        isinstance(h, WeightMirrorHook) for h in trainer_of("sign_symmetry", None)._hooks
    )
    with pytest.raises(ValueError, match=r"train.bio_mirror has unknown option\(s\) \['sigma'\]"):
        trainer_of("weight_mirror", {"sigma": 2.0})
    with pytest.raises(ValueError, match="train.bio_mirror.lr=-1"):
        trainer_of("weight_mirror", {"lr": -1})

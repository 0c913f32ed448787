"""configs/VOC-Detection: every rule at R18 and R50 on the 07+12 protocol, from the ImageNet
classifier of its rule, and each yaml's LazyConfig twin the same run."""

import os

import pytest
import torch
from detectron2.config import LazyConfig, get_cfg, instantiate
from detectron2.modeling import build_model
from detectron2.solver import build_lr_scheduler
from torch import nn

import bio_detectron as bd
from bio_detectron.config import add_bio_config, add_classification_config
from bio_detectron.core.optim import BatchManhattanSGD
from bio_detectron.engine import BioTrainer
from bio_detectron.evaluation import build_dataset_evaluator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")
# leaf name -> (MODEL.BIO.RULE, MODEL.BIO.SCALE, the rule of the ImageNet classifier)
RULES = {
    "backprop": ("backprop", "kaiming", "backprop"),
    "sign_symmetry": ("sign_symmetry", "mean_abs", "sign_symmetry"),
    "feedback_alignment": ("feedback_alignment", "mean_abs", "feedback_alignment"),
    "kolen_pollack": ("kolen_pollack", "0.005", "kolen_pollack"),
    "sign_symmetry_bm": ("sign_symmetry", "mean_abs", "sign_symmetry"),
}
LEAVES = [(depth, leaf) for depth in (18, 50) for leaf in RULES]
IDS = [f"R{d}-{leaf}" for d, leaf in LEAVES]


def yacs(name, classification=False):
    cfg = get_cfg()
    add_bio_config(cfg)
    if classification:
        add_classification_config(cfg)
    cfg.merge_from_file(os.path.join(CONFIGS, name + ".yaml"))
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def lazy(name):
    return LazyConfig.load(os.path.join(CONFIGS, name + ".py"))


@pytest.mark.parametrize("depth,leaf", LEAVES, ids=IDS)
def test_voc_config_is_07_12_with_the_imagenet_classifier_of_its_rule(depth, leaf):
    rule, scale, imagenet_rule = RULES[leaf]
    cfg = yacs(f"VOC-Detection/retinanet_R_{depth}_FPN_{leaf}")
    assert cfg.DATASETS.TRAIN == ("voc_2007_trainval", "voc_2012_trainval")
    assert cfg.DATASETS.TEST == ("voc_2007_test",)
    assert cfg.MODEL.RETINANET.NUM_CLASSES == 20 and cfg.MODEL.RESNETS.DEPTH == depth
    assert (cfg.MODEL.BIO.RULE, str(cfg.MODEL.BIO.SCALE)) == (rule, scale)
    assert (cfg.SOLVER.MAX_ITER, cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.STEPS) == (
        12000,
        16,
        (8000, 10500),
    )
    assert cfg.OUTPUT_DIR == f"output/voc/retinanet_R_{depth}_FPN_{leaf}"
    # The backbone: what tools/train_imagenet.py writes for the ImageNet config of the same rule
    # and depth.
    imagenet = yacs(f"ImageNet/resnet{depth}_{imagenet_rule}", classification=True)
    assert os.path.normpath(cfg.MODEL.WEIGHTS) == os.path.normpath(
        os.path.join(imagenet.OUTPUT_DIR, "model_final.pth")
    )
    assert (imagenet.MODEL.BIO.RULE, imagenet.MODEL.RESNETS.DEPTH) == (imagenet_rule, depth)
    bm = leaf.endswith("_bm")
    assert (cfg.SOLVER.BIO.OPTIMIZER, cfg.SOLVER.BIO.LAST_LAYER_LR) == (
        ("BatchManhattanSGD", 0.01) if bm else ("SGD", 0.0)
    )


@pytest.mark.parametrize("depth,leaf", LEAVES, ids=IDS)
def test_voc_lazy_config_sets_what_its_yacs_twin_sets(depth, leaf):
    name = f"VOC-Detection/retinanet_R_{depth}_FPN_{leaf}"
    cfg, ycfg = lazy(name), yacs(name)
    assert (cfg.model.rule, str(cfg.model.get("scale", "kaiming"))) == (
        ycfg.MODEL.BIO.RULE,
        str(ycfg.MODEL.BIO.SCALE),
    )
    assert cfg.model.model.backbone.bottom_up.stages.depth == ycfg.MODEL.RESNETS.DEPTH
    assert cfg.model.model.num_classes == ycfg.MODEL.RETINANET.NUM_CLASSES
    t = cfg.dataloader.train
    assert tuple(t.dataset.names) == ycfg.DATASETS.TRAIN
    assert (cfg.dataloader.test.dataset.names,) == ycfg.DATASETS.TEST
    # The evaluator of the test set's evaluator_type (VOC's, with AP50 per class).
    assert cfg.dataloader.evaluator._target_ is build_dataset_evaluator
    assert cfg.dataloader.evaluator.dataset_name == ycfg.DATASETS.TEST[0]
    assert tuple(t.mapper.augmentations[0].short_edge_length) == ycfg.INPUT.MIN_SIZE_TRAIN
    assert t.mapper.augmentations[0].max_size == ycfg.INPUT.MAX_SIZE_TRAIN
    test_resize = cfg.dataloader.test.mapper.augmentations[0]
    assert (test_resize.short_edge_length, test_resize.max_size) == (
        ycfg.INPUT.MIN_SIZE_TEST,
        ycfg.INPUT.MAX_SIZE_TEST,
    )
    s = ycfg.SOLVER
    assert (t.total_batch_size, cfg.train.max_iter) == (s.IMS_PER_BATCH, s.MAX_ITER)
    assert (cfg.optimizer.lr, cfg.optimizer.momentum, cfg.optimizer.weight_decay) == (
        s.BASE_LR,
        s.MOMENTUM,
        s.WEIGHT_DECAY,
    )
    assert cfg.train.checkpointer.period == s.CHECKPOINT_PERIOD
    assert (cfg.train.init_checkpoint, cfg.train.output_dir) == (
        ycfg.MODEL.WEIGHTS,
        ycfg.OUTPUT_DIR,
    )
    # The learning rate over the run, from both schedulers.
    params = [nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.SGD(params, lr=s.BASE_LR)
    schedule = build_lr_scheduler(ycfg, optimizer)
    optimizer.step()  # training's order (no gradient: nothing moves), which torch checks
    multiplier = instantiate(cfg.lr_multiplier)
    for it in range(s.MAX_ITER):
        if it % 250 == 0 or it in (999, 1000, 7999, 8000, 10499, 10500, 11999):
            lr = multiplier(it / s.MAX_ITER) * s.BASE_LR
            assert lr == pytest.approx(schedule.get_last_lr()[0], rel=1e-6), it
        schedule.step()


@pytest.mark.slow
@pytest.mark.parametrize("depth,leaf", LEAVES, ids=IDS)
def test_voc_configs_build_the_same_model_and_optimizer(depth, leaf):
    name = f"VOC-Detection/retinanet_R_{depth}_FPN_{leaf}"
    cfg, ycfg = lazy(name), yacs(name)
    ycfg.MODEL.WEIGHTS = ""
    # The yaml writes the anchor sizes to two decimals; detectron2's retinanet.py computes them.
    cfg.model.model.anchor_generator.sizes = [list(x) for x in ycfg.MODEL.ANCHOR_GENERATOR.SIZES]
    torch.manual_seed(0)
    ymodel = build_model(ycfg)
    model = instantiate(cfg.model)
    rules = bd.rules_of(ymodel)
    assert rules == bd.rules_of(model)
    assert set(rules.values()) == {RULES[leaf][0]}
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == {
        k: tuple(v.shape) for k, v in ymodel.state_dict().items()
    }
    assert ymodel.head.cls_score.out_channels == 9 * 20  # 9 anchors x 20 VOC classes
    assert repr(model.head.cls_subnet[0].learning_rule) == repr(
        ymodel.head.cls_subnet[0].learning_rule
    )
    # The optimizer's groups: the same hyperparameters for the same parameters.
    cfg.optimizer.params.model = model
    optimizer, yoptimizer = instantiate(cfg.optimizer), BioTrainer.build_optimizer(ycfg, ymodel)
    assert type(optimizer) is type(yoptimizer)
    names, ynames = ({id(p): n for n, p in m.named_parameters()} for m in (model, ymodel))

    def groups(opt, names):
        return sorted(
            (sorted(names[id(p)] for p in g["params"]), g["lr"], g["weight_decay"], g["momentum"])
            + ((g["batch_manhattan"],) if isinstance(opt, BatchManhattanSGD) else ())
            for g in opt.param_groups
        )

    assert groups(optimizer, names) == groups(yoptimizer, ynames)
    if leaf.endswith("_bm"):
        lrs = {(round(g["lr"], 12), g["batch_manhattan"]) for g in optimizer.param_groups}
        assert lrs == {(0.0001, True), (0.01, False)}  # the sign step; the last layer's SGD

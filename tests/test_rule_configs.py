"""The configs of kolen_pollack, weight_mirror and batch manhattan, and both trainers with them."""

import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.engine.hooks import PeriodicCheckpointer
from detectron2.modeling import build_model

import bio_detectron as bd
from bio_detectron.config import add_bio_config, add_classification_config
from bio_detectron.core.optim import BatchManhattanSGD
from bio_detectron.data import classification_folder
from bio_detectron.engine import BioTrainer, ClassificationTrainer, WeightMirrorHook
from bio_detectron.modeling.classification import build_classifier

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(path, *opts, classification=False):
    cfg = get_cfg()
    add_bio_config(cfg)
    if classification:
        add_classification_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, path))
    cfg.merge_from_list(list(opts))
    return cfg


@pytest.mark.parametrize(
    "name,rule", [("kolen_pollack", "kolen_pollack"), ("weight_mirror", "weight_mirror"),
                  ("sign_symmetry_bm", "sign_symmetry")],
)  # fmt: skip
def test_shapes_configs_build(name, rule):
    cfg = _cfg(f"configs/Shapes-Detection/retinanet_R_18_FPN_{name}.yaml")
    model = build_model(cfg)
    assert set(bd.rules_of(model).values()) == {rule}
    optimizer = BioTrainer.build_optimizer(cfg, model)
    trained = [n for n, p in model.named_parameters() if n.endswith(".feedback")]
    assert len(trained) == (34 if rule == "kolen_pollack" else 0)
    if name in ("sign_symmetry_bm", "kolen_pollack"):
        assert isinstance(optimizer, BatchManhattanSGD)
        lrs = {(g["lr"], g["batch_manhattan"]) for g in optimizer.param_groups}
        assert lrs == {(cfg.SOLVER.BASE_LR, True), (0.02, False)}
        last = [p for g in optimizer.param_groups if not g["batch_manhattan"] for p in g["params"]]
        names = {id(p): n for n, p in model.named_parameters()}
        # Kolen-Pollack's B of the last layer steps with its W (plain SGD), every other B by sign
        # with its W (check_trained_feedback, run by build_optimizer, checks the groups).
        feedback = [".feedback"] if rule == "kolen_pollack" else []
        assert sorted(names[id(p)] for p in last) == sorted(
            f"head.{layer}{suffix}"
            for layer in ("bbox_pred", "cls_score")
            for suffix in [".bias", ".weight"] + feedback
        )
        # The sign-stepping groups' decay is the config's times its factor (the norms' and
        # biases' 0 stays 0); the last layer's SGD keeps the config's.
        factor, decay = cfg.SOLVER.BIO.BATCH_MANHATTAN_WEIGHT_DECAY_FACTOR, cfg.SOLVER.WEIGHT_DECAY
        assert factor > 1
        decays = {
            (g["batch_manhattan"], round(g["weight_decay"], 12)) for g in optimizer.param_groups
        }
        assert decays == {(True, round(decay * factor, 12)), (True, 0.0), (False, decay),
                          (False, 0.0)}  # fmt: skip
    else:
        assert type(optimizer) is torch.optim.SGD


@pytest.mark.parametrize("rule", ["kolen_pollack", "weight_mirror"])
def test_imagenet_configs_build(rule):
    cfg = _cfg(f"configs/ImageNet/resnet18_{rule}.yaml", "MODEL.DEVICE", "cpu", classification=True)
    rules = bd.rules_of(build_classifier(cfg, 10))
    assert rules.pop("classifier") == "backprop" and set(rules.values()) == {rule}


@pytest.mark.slow
def test_bio_trainer_runs_the_mirror_before_the_checkpointer(tmp_path):
    cfg = _cfg(
        "configs/quick_schedules/retinanet_R_18_FPN_sign_symmetry_instant_test.yaml",
        "MODEL.BIO.RULE", "weight_mirror", "MODEL.BIO.MIRROR.PERIOD", 1,
        "MODEL.BIO.MIRROR.INITIAL_STEPS", 1, "MODEL.BIO.ALIGNMENT.PERIOD", 0,
        "SOLVER.MAX_ITER", 2, "DATASETS.TEST", (), "OUTPUT_DIR", str(tmp_path),
    )  # fmt: skip
    trainer = BioTrainer(cfg)
    kinds = [type(h) for h in trainer._hooks]
    assert kinds.index(WeightMirrorHook) < kinds.index(PeriodicCheckpointer)
    conv = trainer.model.head.cls_subnet[0]
    conv.make_feedback_now()
    start = conv.feedback.clone()
    trainer.train()
    assert not torch.equal(start, conv.feedback)


def _classification_cfg(output_dir, root, rule, max_iter):
    cfg = _cfg(
        "configs/ImageNet/Base-Classification.yaml",
        "MODEL.DEVICE", "cpu", "DATASETS.IMAGENET_ROOT", root, "INPUT.CLASSIFICATION.SIZE", 32,
        "SOLVER.IMS_PER_BATCH", 4, "SOLVER.MAX_ITER", max_iter, "SOLVER.CHECKPOINT_PERIOD", 100,
        "TEST.EVAL_PERIOD", 100, "DATALOADER.NUM_WORKERS", 0, "OUTPUT_DIR", str(output_dir),
        "MODEL.BIO.RULE", rule, "MODEL.BIO.MIRROR.PERIOD", 5, "MODEL.BIO.MIRROR.INITIAL_STEPS", 2,
        classification=True,
    )  # fmt: skip
    cfg.freeze()
    return cfg


@pytest.mark.slow
@pytest.mark.parametrize("rule", ["kolen_pollack", "weight_mirror"])
def test_classification_checkpoint_holds_b_and_resume_restores_it(tmp_path, rule):
    root = classification_folder(
        "shapes",
        root=str(tmp_path / "data"),
        image_size=32,
        num_train_per_class=2,
        num_val_per_class=1,
    )
    first = ClassificationTrainer(_classification_cfg(tmp_path, root, rule, 2))
    if rule == "weight_mirror":
        kinds = [type(h) for h in first._hooks]
        assert kinds.index(WeightMirrorHook) < kinds.index(PeriodicCheckpointer)
    conv = first.unwrapped_model.backbone.bottom_up.stem.conv1
    conv.make_feedback_now()
    initial = conv.feedback.detach().clone()
    first.resume_or_load(resume=False)
    first.train()
    saved = torch.load(tmp_path / "model_final.pth", weights_only=False)
    key = "backbone.bottom_up.stem.conv1.feedback"
    # B moved (KP: its optimizer step; WM: the initial mirror steps), and the checkpoint of the
    # last iteration was written after the mirror step, not before.
    assert not torch.equal(saved["model"][key], initial)
    assert torch.equal(saved["model"][key], conv.feedback)

    second = ClassificationTrainer(_classification_cfg(tmp_path, root, rule, 4))
    second.resume_or_load(resume=True)
    model = second.unwrapped_model
    assert second.start_iter == 2 and model.backbone.bottom_up.stem.conv1._feedback_restored
    state = model.state_dict()
    assert sum(k.endswith(".feedback") for k in state) == 20  # the 20 convs; fc is backprop
    for k, v in state.items():
        assert torch.equal(v, saved["model"][k]), k
    if rule == "kolen_pollack":  # B's momentum is resumed with W's
        index = [n for n, _ in model.named_parameters()].index(key)
        buffers = second.optimizer.state_dict()["state"]
        saved_buffers = saved["trainer"]["_trainer"]["optimizer"]["state"]
        assert len(buffers) == len(list(model.parameters()))
        assert torch.equal(
            buffers[index]["momentum_buffer"], saved_buffers[index]["momentum_buffer"]
        )
    second.train()
    after = model.backbone.bottom_up.stem.conv1.feedback
    if rule == "weight_mirror":  # iterations 2 and 3: no mirror step due, no initial steps again
        assert torch.equal(after, saved["model"][key])
    else:
        assert not torch.equal(after, saved["model"][key])


def test_auto_scale_workers_scales_the_last_layer_lr_like_the_base_lr():
    path = "configs/Shapes-Detection/retinanet_R_18_FPN_sign_symmetry_bm.yaml"
    cfg = _cfg(path, "SOLVER.REFERENCE_WORLD_SIZE", 2)
    cfg.freeze()
    base, last = cfg.SOLVER.BASE_LR, cfg.SOLVER.BIO.LAST_LAYER_LR
    assert last > 0 and last != base
    for workers in (1, 8):
        scaled = BioTrainer.auto_scale_workers(cfg, workers)
        assert scaled.SOLVER.BASE_LR == pytest.approx(base * workers / 2, rel=1e-12)
        assert scaled.SOLVER.BIO.LAST_LAYER_LR == pytest.approx(last * workers / 2, rel=1e-12)
        assert scaled.is_frozen()
    assert (cfg.SOLVER.BASE_LR, cfg.SOLVER.BIO.LAST_LAYER_LR) == (base, last)  # left alone
    assert BioTrainer.auto_scale_workers(cfg, 2) is cfg  # at the reference: unchanged
    plain = _cfg(path, "SOLVER.REFERENCE_WORLD_SIZE", 2, "SOLVER.BIO.LAST_LAYER_LR", 0.0)
    assert BioTrainer.auto_scale_workers(plain, 4).SOLVER.BIO.LAST_LAYER_LR == 0.0  # = BASE_LR's


@pytest.mark.slow
def test_bio_trainer_sets_the_decay_of_the_configured_schedule_before_scaling_to_the_workers(
    tmp_path,
):
    # REFERENCE_WORLD_SIZE 2 in one process: detectron2 halves the batch and the lr and doubles
    # MAX_ITER; lr x decay x iterations is then unchanged only with the decay of the 4 configured
    # iterations (0.05 x 2 / 4), not of the 8 scaled ones.
    cfg = _cfg(
        "configs/quick_schedules/retinanet_R_18_FPN_sign_symmetry_instant_test.yaml",
        "SOLVER.REFERENCE_WORLD_SIZE", 2, "SOLVER.WEIGHT_DECAY", 0.05,
        "SOLVER.BIO.WEIGHT_DECAY_REFERENCE_ITER", 2, "DATASETS.TEST", (),
        "SOLVER.BIO.LAST_LAYER_LR", 0.04, "OUTPUT_DIR", str(tmp_path),
    )  # fmt: skip
    trainer = BioTrainer(cfg)
    assert (trainer.cfg.SOLVER.MAX_ITER, trainer.cfg.SOLVER.IMS_PER_BATCH) == (8, 1)
    conv = trainer.model.head.cls_subnet[0].weight
    groups = trainer.optimizer.param_groups
    (decay,) = [g["weight_decay"] for g in groups if any(p is conv for p in g["params"])]
    assert decay == pytest.approx(0.05 * 2 / 4, rel=1e-12)
    # The last layer's absolute lr is halved with BASE_LR (the schedule's lr, before warm-up).
    last = trainer.model.head.cls_score.weight
    (lr,) = [g["initial_lr"] for g in groups if any(p is last for p in g["params"])]
    assert lr == pytest.approx(0.04 / 2, rel=1e-12)
    assert trainer.cfg.SOLVER.BIO.LAST_LAYER_LR == pytest.approx(0.02, rel=1e-12)
    assert trainer.cfg.SOLVER.BIO.WEIGHT_DECAY_REFERENCE_ITER == 0  # resolved once

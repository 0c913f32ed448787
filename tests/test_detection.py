"""Detection models with learning rules: end to end on CPU, train_net, launch, BioPlausible."""

import copy
import math
import os
import sys

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.modeling import FPN, ResNet, build_model
from detectron2.modeling.meta_arch.retinanet import RetinaNet, RetinaNetHead
from detectron2.utils.events import EventStorage

import bio_detectron as bd
from bio_detectron import add_bio_config
from bio_detectron.config import check_model_device

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


@pytest.fixture(scope="module")
def batch():
    dicts = DatasetCatalog.get("shapes_train_mini")[:2]
    mapper = DatasetMapper(instant_cfg(), is_train=True)
    return [mapper(copy.deepcopy(d)) for d in dicts]


def _grads(model, batch):
    model.train()
    with EventStorage():
        losses = model(batch)
    sum(losses.values()).backward()
    return losses, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.slow
def test_bio_retinanet_backprop_equals_stock_retinanet_exactly(batch):
    cfg = instant_cfg("MODEL.BIO.RULE", "backprop")
    torch.manual_seed(0)
    model = build_model(cfg)
    assert type(model) is RetinaNet and type(model.head) is RetinaNetHead
    stock_cfg = cfg.clone()
    stock_cfg.MODEL.META_ARCHITECTURE = "RetinaNet"
    stock_cfg.MODEL.BACKBONE.NAME = "build_retinanet_resnet_fpn_backbone"
    stock = build_model(stock_cfg)
    assert set(stock.state_dict()) == set(model.state_dict())
    stock.load_state_dict(model.state_dict())
    torch.manual_seed(1)
    l1, g1 = _grads(model, batch)
    torch.manual_seed(1)
    l2, g2 = _grads(stock, batch)
    assert {k: v.item() for k, v in l1.items()} == {k: v.item() for k, v in l2.items()}
    assert g1.keys() == g2.keys() and len(g1) > 50
    # Equal up to float summation order: where a tensor feeds several layers (each FPN level
    # feeds both head towers) autograd may add the incoming gradients in another order.
    for k in g1:
        scale = g2[k].abs().max().item()
        torch.testing.assert_close(g1[k], g2[k], rtol=1e-5, atol=1e-5 * scale, msg=k)


@pytest.mark.slow
@pytest.mark.parametrize(
    "rule", ["sign_symmetry", "feedback_alignment", "sign_symmetry_random_magnitude"]
)
def test_rule_changes_gradients_where_it_should(batch, rule):
    torch.manual_seed(0)
    ref = build_model(instant_cfg("MODEL.BIO.RULE", "backprop"))
    model = build_model(instant_cfg("MODEL.BIO.RULE", rule))
    model.load_state_dict(ref.state_dict(), strict=False)  # same weights, the rule's own B
    rules = bd.rules_of(model)
    # ResNet-18: 20 convs; FPN: 6 + P6, P7; head: 2 towers of MODEL.RETINANET.NUM_CONVS (2) + 2
    assert set(rules.values()) == {rule} and len(rules) == 20 + 8 + 6
    torch.manual_seed(1)
    l_ref, g_ref = _grads(ref, batch)
    torch.manual_seed(1)
    losses, g = _grads(model, batch)
    assert all(torch.isfinite(v) for v in losses.values())
    for k in losses:  # same forward pass
        torch.testing.assert_close(losses[k], l_ref[k])
    # The last layers' weight gradients need no feedback through other layers: equal.
    for k in ("head.cls_score.weight", "head.bbox_pred.weight"):
        torch.testing.assert_close(g[k], g_ref[k])
    # Everything below them gets its gradient through B.
    for k in (
        "head.cls_subnet.0.weight",
        "backbone.fpn_output3.weight",
        "backbone.bottom_up.stem.conv1.weight",
    ):
        assert not torch.allclose(g[k], g_ref[k]), k


def test_per_part_rules_and_exclude():
    cfg = instant_cfg(
        "MODEL.BIO.RULE",
        "feedback_alignment",
        "MODEL.BIO.PARTS.FPN",
        "backprop",
        "MODEL.BIO.PARTS.PREDICTOR",
        "sign_symmetry",
        "MODEL.BIO.EXCLUDE",
        ["stem"],
    )
    rules = bd.rules_of(build_model(cfg))
    assert rules["backbone.bottom_up.stem.conv1"] == "none"
    assert rules["backbone.bottom_up.res2.0.conv1"] == "feedback_alignment"
    assert rules["backbone.fpn_lateral3"] == rules["backbone.top_block.p7"] == "backprop"
    assert rules["head.cls_subnet.0"] == "feedback_alignment"
    assert rules["head.cls_score"] == rules["head.bbox_pred"] == "sign_symmetry"


@pytest.mark.parametrize(
    "opts,message",
    [
        (
            ["MODEL.BIO.RULE", "sign-symmetry"],
            "MODEL.BIO.RULE='sign-symmetry' is not a learning rule",
        ),
        (["MODEL.BIO.PARTS.HEAD", "fa"], "MODEL.BIO.PARTS.HEAD='fa' is not a learning rule"),
        (["MODEL.BIO.SCALE", "huge"], "MODEL.BIO.SCALE='huge' is not allowed"),
        (["MODEL.BIO.EXCLUDE", ["roi_heads"]], "MODEL.BIO.EXCLUDE[0]='roi_heads' matches no"),
        (
            ["MODEL.RETINANET.HEAD_NAME", "Nope"],
            "MODEL.RETINANET.HEAD_NAME='Nope' is not registered",
        ),
        (
            ["MODEL.META_ARCHITECTURE", "BioPlausible", "MODEL.BIO.BASE_META_ARCHITECTURE", "Nope"],
            "MODEL.BIO.BASE_META_ARCHITECTURE='Nope' is not a meta-architecture",
        ),
    ],
)
def test_bad_config_values_are_named(opts, message):
    with pytest.raises(ValueError) as e:
        build_model(instant_cfg(*opts))
    assert message in str(e.value)


def test_bio_retinanet_is_stock_retinanet_converted_whole():
    cfg = instant_cfg("MODEL.BIO.RULE", "feedback_alignment", "MODEL.BIO.EXCLUDE", ["fpn_output"])
    model = build_model(cfg)
    assert type(model) is RetinaNet and type(model.head) is RetinaNetHead
    assert type(model.backbone) is FPN and type(model.backbone.bottom_up) is ResNet
    rules = bd.rules_of(model)
    assert {n for n, r in rules.items() if r == "none"} == {
        f"backbone.fpn_output{i}" for i in (3, 4, 5)
    }
    assert set(rules.values()) == {"feedback_alignment", "none"}


@pytest.mark.parametrize("meta", ["RetinaNet", "GeneralizedRCNN"])
def test_bio_backbone_under_a_meta_architecture_that_does_not_convert_is_refused(meta):
    # It would train with plain backprop, silently: the builder names the meta-architecture to use.
    with pytest.raises(ValueError) as e:
        build_model(instant_cfg("MODEL.META_ARCHITECTURE", meta))
    assert (
        "MODEL.BACKBONE.NAME='build_bio_retinanet_resnet_fpn_backbone' is converted by the "
        f"meta-architecture that holds it, but MODEL.META_ARCHITECTURE={meta!r} does not convert"
    ) in str(e.value)
    assert f"'BioPlausible' with MODEL.BIO.BASE_META_ARCHITECTURE {meta!r}" in str(e.value)
    # Under BioPlausible the same backbone is converted, with the whole model.
    cfg = instant_cfg(
        "MODEL.META_ARCHITECTURE", "BioPlausible", "MODEL.BIO.BASE_META_ARCHITECTURE", "RetinaNet",
        "MODEL.BIO.RULE", "sign_symmetry",
    )  # fmt: skip
    model = build_model(cfg)
    assert type(model) is RetinaNet and set(bd.rules_of(model).values()) == {"sign_symmetry"}


def test_unknown_part_key_is_named():
    # yacs names the key (an AssertionError from opts, a KeyError from a file).
    with pytest.raises((KeyError, AssertionError), match="MODEL.BIO.PARTS.NECK"):
        instant_cfg("MODEL.BIO.PARTS.NECK", "backprop")


def _faster_rcnn_cfg(rule):
    from detectron2 import model_zoo

    cfg = get_cfg()
    add_bio_config(cfg)
    cfg.merge_from_file(model_zoo.get_config_file("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"))
    cfg.MODEL.META_ARCHITECTURE = "BioPlausible"
    cfg.MODEL.BIO.BASE_META_ARCHITECTURE = "GeneralizedRCNN"
    cfg.MODEL.BIO.RULE = rule
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (96,), 96
    return cfg


@pytest.mark.slow
def test_model_zoo_faster_rcnn_trains_a_step_through_bio_plausible():
    cfg = _faster_rcnn_cfg("sign_symmetry")
    torch.manual_seed(0)
    model = build_model(cfg)
    assert type(model).__name__ == "GeneralizedRCNN"  # the inner model itself
    stock_cfg = cfg.clone()
    stock_cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    assert set(build_model(stock_cfg).state_dict()) == set(model.state_dict())
    rules = bd.rules_of(model)
    assert set(rules.values()) == {"sign_symmetry"}
    assert rules["roi_heads.box_predictor.cls_score"] == "sign_symmetry"
    mapper = DatasetMapper(cfg, is_train=True)
    batch = [mapper(copy.deepcopy(d)) for d in DatasetCatalog.get("shapes_train_mini")[:2]]
    opt = torch.optim.SGD(model.parameters(), lr=0.001)
    before = model.backbone.bottom_up.res5[0].conv1.weight.clone()
    with EventStorage():
        losses = model(batch)
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    opt.step()
    assert not torch.equal(before, model.backbone.bottom_up.res5[0].conv1.weight)


def _args(*opts, config=INSTANT, **kw):
    from detectron2.engine import default_argument_parser

    args = default_argument_parser().parse_args(["--config-file", config, *map(str, opts)])
    for k, v in kw.items():
        setattr(args, k, v)
    return args


@pytest.mark.slow
def test_train_net_trains_evaluates_and_resumes(tmp_path):
    import train_net

    out = str(tmp_path)
    results = train_net.main(_args("MODEL.BIO.RULE", "feedback_alignment", "OUTPUT_DIR", out))
    assert set(results["bbox"]) >= {"AP", "AP50", "AP75"}
    assert 0 <= results["bbox"]["AP"] <= 100
    for f in (
        "model_0000001.pth",
        "model_final.pth",
        "last_checkpoint",
        "metrics.json",
        "config.yaml",
    ):
        assert os.path.exists(os.path.join(out, f)), f
    ckpt = torch.load(os.path.join(out, "model_final.pth"), weights_only=False)
    assert {"model", "trainer", "iteration"} <= set(ckpt)
    assert "optimizer" in ckpt["trainer"]["_trainer"]
    assert any("LRScheduler" in k for k in ckpt["trainer"]["hooks"])
    B = ckpt["model"]["head.cls_subnet.0.feedback"]

    # Resume: continues at the saved iteration with feedback buffers restored, even when the
    # seed asks for other ones.
    from bio_detectron.engine import BioTrainer

    cfg = instant_cfg(
        "MODEL.BIO.RULE",
        "feedback_alignment",
        "OUTPUT_DIR",
        out,
        "SOLVER.MAX_ITER",
        6,
        "MODEL.BIO.SEED",
        5,
    )
    trainer = BioTrainer(cfg)
    assert not torch.equal(trainer.model.head.cls_subnet[0].feedback, B)
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == 4
    assert torch.equal(trainer.model.head.cls_subnet[0].feedback, B)
    assert trainer.scheduler.last_epoch == 4
    assert trainer.optimizer.state_dict()["state"]  # momentum buffers restored

    # --eval-only loads the weights and evaluates.
    results = train_net.main(
        _args(
            "MODEL.WEIGHTS", os.path.join(out, "model_final.pth"), "OUTPUT_DIR", out, eval_only=True
        )
    )
    assert "AP" in results["bbox"]


@pytest.mark.slow
def test_diverging_run_stops_with_clear_message_and_checkpoint_intact(tmp_path):
    import train_net

    out = str(tmp_path)
    with pytest.raises(FloatingPointError) as e:
        train_net.main(
            _args(
                "SOLVER.BASE_LR",
                1e9,
                "SOLVER.MAX_ITER",
                20,
                "SOLVER.CHECKPOINT_PERIOD",
                1,
                "OUTPUT_DIR",
                out,
            )
        )
    msg = str(e.value)
    assert (
        "Loss became non-finite at iteration" in msg
        and "training stopped before the optimizer step" in msg
    )
    last = open(os.path.join(out, "last_checkpoint")).read().strip()
    assert last in msg or "none written yet" in msg
    state = torch.load(os.path.join(out, last), weights_only=False)["model"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


@pytest.mark.parametrize("value", [0.01, "0.01", "1e-2"])
def test_scale_as_a_number_from_command_line_and_file(value, tmp_path):
    # tools/train_net.py hands "MODEL.BIO.SCALE 0.01" to merge_from_list as the string "0.01",
    # which yacs decodes to a float: the key's default is a string, so yacs alone refuses it.
    cfg = instant_cfg("MODEL.BIO.SCALE", value)
    assert cfg.MODEL.BIO.SCALE == "0.01"
    path = tmp_path / "scale.yaml"
    path.write_text(f"_BASE_: {INSTANT}\nMODEL:\n  BIO:\n    SCALE: 0.01\n")
    cfg2 = get_cfg()
    add_bio_config(cfg2)
    cfg2.merge_from_file(str(path))
    assert cfg2.MODEL.BIO.SCALE == "0.01"
    conv = build_model(cfg).head.cls_subnet[0]
    torch.testing.assert_close(conv.feedback_weight(), torch.sign(conv.weight) * 0.01)
    with pytest.raises(ValueError, match="Type mismatch"):  # other keys: yacs as before
        instant_cfg("MODEL.BIO.SEED", 0.5)


def test_scale_numbers_leave_yacs_and_other_configs_alone():
    import pickle

    import yacs.config

    check = yacs.config._check_and_coerce_cfg_value_type
    cfg = instant_cfg("MODEL.BIO.SCALE", "mean_abs")
    assert yacs.config._check_and_coerce_cfg_value_type is check  # yacs's own function
    assert check.__module__ == "yacs.config"
    assert type(cfg) is type(get_cfg())  # the config keeps its class
    # Copies and pickles keep taking numbers, each merging into itself.
    for other in (cfg.clone(), pickle.loads(pickle.dumps(cfg))):
        other.merge_from_list(["MODEL.BIO.SCALE", "0.5"])
        assert other.MODEL.BIO.SCALE == "0.5" and cfg.MODEL.BIO.SCALE == "mean_abs"
    # A config without add_bio_config keeps yacs's rules for a string key.
    plain = get_cfg()
    with pytest.raises(ValueError, match="Type mismatch"):
        plain.merge_from_list(["MODEL.META_ARCHITECTURE", "0.5"])


def test_cuda_device_without_cuda_is_an_error_naming_the_cpu_choice(monkeypatch):
    """MODEL.DEVICE cuda on a machine without CUDA stops the tools with an error that says how to
    choose the CPU, rather than training on the CPU quietly."""
    import train_net

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    message = r"MODEL.DEVICE='cuda', but CUDA is not available.*add MODEL.DEVICE cpu$"
    with pytest.raises(ValueError, match=message):
        train_net.setup(_args("MODEL.DEVICE", "cuda"))
    with pytest.raises(ValueError, match=r"MODEL.DEVICE='cuda:1', but CUDA is not available"):
        check_model_device(instant_cfg("MODEL.DEVICE", "cuda:1"))
    check_model_device(instant_cfg("MODEL.DEVICE", "cpu"))  # the CPU, chosen: no error


def test_eval_only_without_weights_is_an_error(tmp_path):
    from bio_detectron.engine import BioTrainer

    cfg = instant_cfg("MODEL.WEIGHTS", "", "OUTPUT_DIR", str(tmp_path))
    with pytest.raises(
        ValueError, match=r"--eval-only needs weights: set MODEL.WEIGHTS .*OUTPUT_DIR"
    ):
        BioTrainer.evaluate(cfg, resume=True)  # nothing to resume from either


@pytest.mark.slow
@pytest.mark.parametrize("native_bf16", [True, False])
def test_amp_on_cpu_trains_in_bfloat16_where_native(native_bf16, tmp_path, monkeypatch, caplog):
    import logging

    from detectron2.engine import SimpleTrainer

    from bio_detectron.engine import BioTrainer, amp

    monkeypatch.setattr(amp, "cpu_has_native_bfloat16", lambda: native_bf16)
    cfg = instant_cfg(
        "SOLVER.AMP.ENABLED", True, "SOLVER.MAX_ITER", 2, "OUTPUT_DIR", str(tmp_path),
        "DATASETS.TEST", (), "MODEL.BIO.RULE", "feedback_alignment",
        "MODEL.BIO.ALIGNMENT.PERIOD", 0,
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="bio_detectron.engine.amp"):
        trainer = BioTrainer(cfg)
    inner = trainer._trainer  # the step class BioTrainer chose for the precision
    conv = trainer.model.head.cls_subnet[0]
    dtypes = []
    conv.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype) if m.training else None)
    trainer.resume_or_load(resume=False)
    trainer.train()
    losses = [v for v, _ in trainer.storage.history("total_loss").values()]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert conv.weight.dtype == conv.weight.grad.dtype == conv.feedback.dtype == torch.float32
    warned = "SOLVER.AMP.ENABLED=True, but cpu has no native half precision" in caplog.text
    if native_bf16:
        assert type(inner) is amp.CPUAutocastTrainer and not warned
        assert dtypes == [torch.bfloat16] * 10  # 2 iterations x 5 FPN levels
    else:
        assert type(inner) is SimpleTrainer and warned and dtypes == [torch.float32] * 10

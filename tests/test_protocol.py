"""tools/protocol.py: pre-train with a rule, detect from that backbone, and from scratch."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer

from bio_detectron.modeling.classification import build_classifier

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(REPO, "tools")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def protocol(load_tool):
    return load_tool("protocol")


def save_classifier(protocol, folder, rule, *opts):
    """A classifier of ``rule`` saved as tools/train_imagenet.py leaves it: model_final.pth and
    the run's config.yaml beside it."""
    cfg = protocol.classification_cfg(
        protocol.CLASSIFY.format(rule), ["MODEL.DEVICE", "cpu", "SEED", "0", *opts]
    )
    torch.manual_seed(0)
    model = build_classifier(cfg, num_classes=10)
    os.makedirs(folder, exist_ok=True)
    DetectionCheckpointer(model, str(folder)).save("model_final")
    with open(os.path.join(folder, "config.yaml"), "w") as f:
        f.write(cfg.dump())
    return os.path.join(folder, "model_final.pth")


def test_handoff_loads_every_backbone_tensor(protocol, tmp_path):
    det_cfg = protocol.detection_cfg(protocol.DETECT.format("kolen_pollack"), [])
    weights = save_classifier(
        protocol, tmp_path, "kolen_pollack", "MODEL.BIO.SCALE", str(det_cfg.MODEL.BIO.SCALE)
    )
    kinds = protocol.check_handoff(det_cfg, weights)
    # 17 convs + 3 shortcuts, each with its BatchNorm (weight, bias; mean, var, count).
    assert kinds == {"parameters": 60, "BN statistics": 60, "feedback": 20}


def test_wrong_rule_handoff_is_refused(protocol, tmp_path):
    weights = save_classifier(
        protocol, tmp_path, "feedback_alignment", "MODEL.BIO.SCALE", "mean_abs"
    )
    det_config = protocol.DETECT.format("sign_symmetry")
    det_cfg = protocol.detection_cfg(det_config, [])
    pattern = r"model_final.pth .*learns with feedback_alignment\(scale='mean_abs'\).*"
    pattern += r"learns with sign_symmetry\(scale='mean_abs'\)"
    with pytest.raises(ValueError, match=pattern):
        protocol.check_handoff(det_cfg, weights, det_config)


def test_same_rule_other_options_is_refused(protocol, tmp_path):
    # The classification config's scale (kaiming), not the detector's (mean_abs): the detector's
    # layers would make their feedback tensors again instead of loading them.
    weights = save_classifier(protocol, tmp_path, "feedback_alignment")
    det_cfg = protocol.detection_cfg(protocol.DETECT.format("feedback_alignment"), [])
    with pytest.raises(ValueError, match=r"scale='kaiming'\).*scale='mean_abs'\)"):
        protocol.check_handoff(det_cfg, weights)


def test_feedback_made_by_other_options_is_refused(protocol, tmp_path):
    # The file's feedback tensors were made with scale kaiming; its config.yaml says mean_abs.
    weights = save_classifier(protocol, tmp_path, "feedback_alignment")
    cfg = protocol.classification_cfg(
        protocol.CLASSIFY.format("feedback_alignment"), ["MODEL.BIO.SCALE", "mean_abs"]
    )
    with open(os.path.join(tmp_path, "config.yaml"), "w") as f:
        f.write(cfg.dump())
    det_cfg = protocol.detection_cfg(protocol.DETECT.format("feedback_alignment"), [])
    pattern = r"the feedback tensors of \['backbone.bottom_up.res2.0.conv1', .* were made by "
    pattern += r"feedback_alignment\(scale='kaiming'\), but .* feedback_alignment\(scale='mean_abs'"
    with pytest.raises(ValueError, match=pattern):
        protocol.check_handoff(det_cfg, weights)


def test_a_backbone_tensor_the_file_lacks_is_named(protocol, tmp_path):
    det_cfg = protocol.detection_cfg(protocol.DETECT.format("backprop"), [])
    weights = save_classifier(protocol, tmp_path, "backprop")
    checkpoint = torch.load(weights, weights_only=False)
    del checkpoint["model"]["backbone.bottom_up.res4.1.conv2.norm.running_var"]
    torch.save(checkpoint, weights)
    pattern = r"model_final.pth does not initialise the detector's backbone.*1 keys not in the "
    pattern += r"file \['backbone.bottom_up.res4.1.conv2.norm.running_var'\]"
    with pytest.raises(ValueError, match=pattern):
        protocol.check_handoff(det_cfg, weights)
    os.remove(os.path.join(tmp_path, "config.yaml"))
    with pytest.raises(ValueError, match="no config.yaml beside it"):
        protocol.check_handoff(det_cfg, weights)


def test_table_ratios_to_backprop(protocol):
    def entry(rule, scratch, pretrained):
        return {"rule": rule, "scratch": {"AP": scratch}, "pretrained": {"AP": pretrained},
                "pretrain_top1": 50.0, "scratch_iters": 3200, "pretrain_iters": 1600,
                "iters": 1600}  # fmt: skip

    rows = protocol.table([entry("backprop", 40.0, 50.0), entry("sign_symmetry", 30.0, 45.0)])
    assert rows[1] == ["sign_symmetry", "30.0", "45.0", "50.0", "0.75", "0.90", "3200; 1600 + 1600"]
    assert protocol.table([entry("sign_symmetry", 30.0, 45.0)])[0][4:6] == ["-", "-"]


def test_compute_counts_pixels(protocol):
    cls_cfg = protocol.classification_cfg(
        protocol.CLASSIFY.format("backprop"), protocol.PRETRAIN_OPTS
    )
    det_cfg = protocol.detection_cfg(protocol.DETECT.format("backprop"), [])
    # The defaults: one pre-training iteration sees the pixels of one detection iteration.
    assert protocol.pixels_per_iteration(cls_cfg, False) == 32 * 64 * 64
    assert protocol.pixels_per_iteration(det_cfg, True) == 8 * 128 * 128
    det_cfg.INPUT.MIN_SIZE_TRAIN = (96, 128)
    with pytest.raises(ValueError, match=r"INPUT.MIN_SIZE_TRAIN=\[96, 128\]"):
        protocol.pixels_per_iteration(det_cfg, True)


def test_a_retrained_checkpoint_is_a_new_command(protocol, tmp_path):
    weights = tmp_path / "model_final.pth"
    weights.write_bytes(b"one")
    config = protocol.DETECT.format("backprop")
    command = protocol.run_command(config, ["MODEL.WEIGHTS", str(weights)])
    assert protocol.run_command(config, ["MODEL.WEIGHTS", str(weights)]) == command
    weights.write_bytes(b"two")
    assert protocol.run_command(config, ["MODEL.WEIGHTS", str(weights)]) != command


@pytest.mark.parametrize(
    "args, message",
    [
        (["--rules", "direct_feedback_alignment"], "feedback tensors map the classifier's"),
        (
            ["--rules", "sign_symmetry_random_magnitude"],
            "needs .*FPN_sign_symmetry_random_magnitude.yaml",
        ),
        (["--rules", "backprop", "--", "MODEL.WEIGHTS", "x.pth"], "without .*MODEL.WEIGHTS"),
    ],
)
def test_refused_arguments(args, message):
    command = [sys.executable, os.path.join(TOOLS, "protocol.py"), *args]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 2
    assert re.search(message, result.stderr), result.stderr


def test_a_rule_mismatch_stops_before_pretraining(tmp_path):
    command = [sys.executable, os.path.join(TOOLS, "protocol.py"), "--rules", "sign_symmetry"]
    command += ["--output-dir", str(tmp_path), "--pretrain-opts", "MODEL.BIO.RULE", "backprop"]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 1
    assert re.search(
        r"resnet18_sign_symmetry.yaml with .* learns with backprop\(\), but the detector's "
        r"backbone learns with sign_symmetry\(scale='mean_abs'\)",
        result.stderr,
    ), result.stderr
    assert os.listdir(tmp_path) == []


# Tiny runs: the 96 px copies of the photos set, 48 px classification images of one per class;
# 8 x 48^2 = 2 x 96^2 pixels, so the scratch run gets P + D iterations.
PRETRAIN_OPTS = [
    "DATASETS.SHAPES_CLASSIFICATION.IMAGE_SIZE", "48",
    "DATASETS.SHAPES_CLASSIFICATION.NUM_TRAIN_PER_CLASS", "1",
    "DATASETS.SHAPES_CLASSIFICATION.NUM_VAL_PER_CLASS", "1",
    "INPUT.CLASSIFICATION.SIZE", "48",
    "SOLVER.IMS_PER_BATCH", "8",
]  # fmt: skip
DETECT_OPTS = [
    "DATASETS.TRAIN", "('photos_train_mini',)",
    "DATASETS.TEST", "('photos_val_mini',)",
    "INPUT.MIN_SIZE_TRAIN", "(96,)",
    "INPUT.MAX_SIZE_TRAIN", "96",
    "INPUT.MIN_SIZE_TEST", "96",
    "INPUT.MAX_SIZE_TEST", "96",
    "SOLVER.IMS_PER_BATCH", "2",
]  # fmt: skip


@pytest.mark.slow
def test_protocol_end_to_end(protocol, tmp_path):
    from detectron2.config import get_cfg

    from bio_detectron.config import add_bio_config
    from bio_detectron.engine import BioTrainer

    out = tmp_path / "protocol"
    command = [sys.executable, os.path.join(TOOLS, "protocol.py"), "--rules", "feedback_alignment"]
    command += ["--iters", "3", "--pretrain-iters", "2", "--output-dir", str(out)]
    command += ["--pretrain-opts", *PRETRAIN_OPTS, "--", *DETECT_OPTS]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert protocol.HEADER in result.stdout
    row = next(line for line in result.stdout.splitlines() if line.startswith("| feedback_"))
    assert row.endswith("| - | - | 5; 2 + 3 |")
    assert "takes from" in result.stdout and "60 parameters, 60 BN statistics, 20 feedback" in (
        result.stdout
    )
    (entry,) = json.loads((out / "protocol.json").read_text())["runs"]
    assert (entry["scratch_iters"], entry["pretrain_iters"], entry["iters"]) == (5, 2, 3)
    classify = out / "feedback_alignment" / "classify2"
    weights = str(classify / "model_final.pth")

    def run_cfg(folder):
        cfg = get_cfg()
        add_bio_config(cfg)
        cfg.merge_from_file(str(out / "feedback_alignment" / folder / "config.yaml"))
        return cfg

    scratch = run_cfg("scratch5")
    assert scratch.MODEL.WEIGHTS == "" and scratch.SOLVER.MAX_ITER == 5
    pretrained = run_cfg("detect3_from_classify2")
    assert pretrained.MODEL.WEIGHTS == weights and pretrained.SOLVER.MAX_ITER == 3
    assert pretrained.MODEL.BIO.RULE == "feedback_alignment"

    # The pre-trained detector at iteration 0, as tools/train_net.py starts it from its config.
    pretrained.OUTPUT_DIR = str(tmp_path / "iteration0")
    trainer = BioTrainer(pretrained)
    trainer.resume_or_load(resume=False)
    assert trainer.start_iter == 0
    saved = torch.load(weights, weights_only=False)["model"]
    backbone = {
        k: v for k, v in trainer.model.state_dict().items() if k.startswith("backbone.bottom_up.")
    }
    assert len(backbone) == 140 and sum(k.endswith(".feedback") for k in backbone) == 20
    for k, v in backbone.items():  # parameters, BN statistics, feedback tensors
        assert torch.equal(v, saved[k]), k

    # Again: every run is reused, nothing trains.
    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.stdout.count("reusing the finished run") == 3
    assert " eta: " not in again.stdout and row in again.stdout

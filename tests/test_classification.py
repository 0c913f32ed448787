"""Classification: models, ImageNet folders, trainer, checkpoints and the hand-off to RetinaNet."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.engine import SimpleTrainer
from detectron2.engine.train_loop import HookBase
from PIL import Image

from bio_detectron.config import add_bio_config, add_classification_config
from bio_detectron.core.convert import rules_of
from bio_detectron.data import classification_folder
from bio_detectron.data.imagenet import (
    ClassificationTrainLoader,
    ImageFolderDataset,
    UnreadableImageError,
    build_classification_dataset,
    build_classification_transform,
    classification_root,
    collate_classification,
    scan_split,
)
from bio_detectron.engine.amp import CPUAutocastTrainer, cpu_has_native_bfloat16
from bio_detectron.engine.classification import (
    ClassificationTrainer,
    build_classification_trainer,
    resolve_schedule,
)
from bio_detectron.modeling.classification import AlexNet, build_classifier
from bio_detectron.modeling.parts import convert_from_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = os.path.join(REPO, "configs", "ImageNet", "Base-Classification.yaml")
SHAPES = dict(image_size=32, num_train_per_class=4, num_val_per_class=2)  # 40 train, 20 val


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    return classification_folder("shapes", root=str(tmp_path_factory.mktemp("datasets")), **SHAPES)


def make_cfg(output_dir, root="", *opts, base=BASE):
    cfg = get_cfg()
    add_bio_config(cfg)
    add_classification_config(cfg)
    cfg.merge_from_file(base)
    cfg.merge_from_list(
        [
            "MODEL.DEVICE", "cpu",
            "DATASETS.IMAGENET_ROOT", root,
            "INPUT.CLASSIFICATION.SIZE", 32,
            "SOLVER.IMS_PER_BATCH", 4,
            "SOLVER.MAX_ITER", 2,
            "DATALOADER.NUM_WORKERS", 0,
            "SEED", 0,
            "OUTPUT_DIR", str(output_dir),
        ]
        + list(opts)
    )  # fmt: skip
    cfg.freeze()
    return cfg


def metrics(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f]


def write_image(path, color=(200, 30, 30), size=40):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (size, size), color).save(path)


# --- Models -------------------------------------------------------------------------------------


def test_resnet_classifier_keys_and_parts(tmp_path):
    cfg = make_cfg(tmp_path, "", "MODEL.BIO.RULE", "sign_symmetry")
    model = build_classifier(cfg, num_classes=7)
    keys = model.state_dict().keys()
    assert "backbone.bottom_up.stem.conv1.weight" in keys
    assert "backbone.bottom_up.stem.conv1.norm.running_mean" in keys
    assert "backbone.bottom_up.res5.1.conv2.weight" in keys
    assert model.classifier.weight.shape == (7, 512)
    rules = rules_of(model)
    assert rules.pop("classifier") == "backprop"  # MODEL.BIO.PARTS.PREDICTOR's default here
    assert len(rules) == 20 and set(rules.values()) == {"sign_symmetry"}  # 17 convs + 3 shortcuts
    assert all(p.requires_grad for p in model.parameters())  # FREEZE_AT 0


def test_alexnet_shapes_forward_backward(tmp_path):
    cfg = make_cfg(
        tmp_path, "", "MODEL.CLASSIFIER.NAME", "AlexNet", "INPUT.CLASSIFICATION.SIZE", 64
    )
    model = build_classifier(cfg, num_classes=10)
    assert isinstance(model, AlexNet)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 192, 384, 256, 256]
    assert all(c.bias is None for c in convs)
    assert not any(isinstance(m, torch.nn.Dropout) for m in model.modules())
    assert model.head.fc6.weight.shape == (4096, 256 * 6 * 6) and model.head.fc6.bias is None
    assert model.head.fc7.weight.shape == (4096, 4096) and model.classifier.weight.shape[0] == 10

    # The same network with narrow fc6/fc7, to keep the test fast, on feedback alignment.
    cfg = make_cfg(
        tmp_path, "", "MODEL.CLASSIFIER.NAME", "AlexNet", "INPUT.CLASSIFICATION.SIZE", 64,
        "MODEL.BIO.RULE", "feedback_alignment",
    )  # fmt: skip
    model = convert_from_cfg(AlexNet(cfg, num_classes=10, width=64), cfg)
    rules = rules_of(model)
    assert rules.pop("classifier") == "backprop"
    assert rules["backbone.bottom_up.conv1"] == rules["head.fc7"] == "feedback_alignment"
    assert len(rules) == 7 and set(rules.values()) == {"feedback_alignment"}

    torch.manual_seed(0)
    images = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    labels = torch.tensor([0, 3, 9, 3])
    model.eval()
    assert model(images).shape == (4, 10)
    model.train()
    losses = model((images, labels))
    assert set(losses) == {"loss_cls"} and math.isfinite(losses["loss_cls"].item())
    losses["loss_cls"].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.shape == p.shape, name
        assert torch.isfinite(p.grad).all(), name
    with pytest.raises(ValueError, match="INPUT.CLASSIFICATION.SIZE=32 is too small"):
        build_classifier(make_cfg(tmp_path, "", "MODEL.CLASSIFIER.NAME", "AlexNet"), 10)


VIT = os.path.join(REPO, "configs", "ImageNet", "vit_tiny_kolen_pollack.yaml")


@pytest.mark.parametrize("rule", ["kolen_pollack", "weight_mirror"])
def test_vit_trains_with_its_attention_on_the_rule(tmp_path, shapes_root, rule):
    cfg = make_cfg(tmp_path, shapes_root, "MODEL.BIO.RULE", rule, base=VIT)
    trainer = build_classification_trainer(cfg)
    model = trainer.unwrapped_model
    rules = rules_of(model)
    attention = "backbone.bottom_up.encoder.layers.encoder_layer_3.self_attention"
    assert rules.pop("classifier") == "backprop"
    assert rules[f"{attention}.in_proj"] == rules[f"{attention}.out_proj"] == rule
    assert len(rules) == 17 and set(rules.values()) == {rule}  # patches, 4 x (2 attention, 2 MLP)
    projection = dict(model.named_modules())[f"{attention}.in_proj"]
    before = projection.feedback.detach().clone()
    trainer.resume_or_load(resume=False)
    trainer.train()
    losses = [v for v, _ in trainer.storage.history("total_loss").values()]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    # Kolen-Pollack's B is trained with W; the weight mirror's B is mirrored from W.
    assert not torch.equal(before, projection.feedback)


def test_vit_size_errors_name_the_keys(tmp_path):
    cfg = make_cfg(
        tmp_path, "", "MODEL.CLASSIFIER.NAME", "ViTClassifier", "MODEL.CLASSIFIER.VIT.PATCH_SIZE", 5
    )
    with pytest.raises(ValueError, match=r"SIZE=32 is not a multiple of .*PATCH_SIZE=5"):
        build_classifier(cfg, 10)
    cfg = make_cfg(
        tmp_path, "", "MODEL.CLASSIFIER.NAME", "ViTClassifier",
        "MODEL.CLASSIFIER.VIT.PATCH_SIZE", 8, "MODEL.CLASSIFIER.VIT.NUM_HEADS", 5,
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"HIDDEN_DIM=768 is not a multiple of .*NUM_HEADS=5"):
        build_classifier(cfg, 10)


def test_unknown_classifier_name(tmp_path):
    with pytest.raises(ValueError, match="MODEL.CLASSIFIER.NAME='VGG'.*AlexNet"):
        build_classifier(make_cfg(tmp_path, "", "MODEL.CLASSIFIER.NAME", "VGG"), 10)


# --- Training -----------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", ["backprop", "sign_symmetry", "feedback_alignment"])
def test_train_a_few_iterations_per_rule(tmp_path, shapes_root, rule):
    cfg = make_cfg(
        tmp_path, shapes_root, "MODEL.BIO.RULE", rule,
        "SOLVER.AMP.ENABLED", True, "MODEL.CLASSIFIER.CHANNELS_LAST", True,
    )  # fmt: skip
    trainer = build_classification_trainer(cfg)
    # AMP on CPU: bfloat16 where the CPU has it natively (engine/amp.py); channels_last: CUDA only.
    native = cpu_has_native_bfloat16()
    assert type(trainer) is ClassificationTrainer
    assert trainer.precision is (torch.bfloat16 if native else None)
    assert type(trainer._trainer) is (CPUAutocastTrainer if native else SimpleTrainer)
    model = trainer.unwrapped_model
    rules = rules_of(model)
    assert rules.pop("classifier") == "backprop"
    assert set(rules.values()) == {rule}
    before = model.backbone.bottom_up.stem.conv1.weight.detach().clone()
    trainer.resume_or_load(resume=False)
    results = trainer.train()

    assert trainer.iter == 2 and trainer.iters_per_epoch == 10  # 40 images / 4
    losses = [v for v, _ in trainer.storage.history("total_loss").values()]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert not torch.equal(before, model.backbone.bottom_up.stem.conv1.weight)
    assert set(results["val"]) == {"top1", "top5"} and 0 <= results["val"]["top1"] <= 100
    # lr: 0.1 * 4 / 256; steps at 30 / 90 and 60 / 90 of MAX_ITER (both round to 1 here)
    assert trainer.cfg.SOLVER.BASE_LR == pytest.approx(0.0015625)
    assert trainer.cfg.SOLVER.STEPS == (1,)
    assert os.path.isfile(tmp_path / "model_final.pth")
    last = metrics(tmp_path)[-1]
    assert last["iteration"] == 2 and last["val/top1"] == results["val"]["top1"]


def test_schedule_from_epochs(tmp_path):
    cfg = make_cfg(tmp_path, "", "SOLVER.MAX_ITER", 0, "SOLVER.IMS_PER_BATCH", 512)
    resolved = resolve_schedule(cfg, iters_per_epoch=100)
    assert resolved.SOLVER.MAX_ITER == 9000 and resolved.SOLVER.STEPS == (3000, 6000)
    assert resolved.SOLVER.BASE_LR == pytest.approx(0.2)
    resolved = resolve_schedule(make_cfg(tmp_path, "", "SOLVER.MAX_ITER", 900), 100)
    assert resolved.SOLVER.MAX_ITER == 900 and resolved.SOLVER.STEPS == (300, 600)
    with pytest.raises(ValueError, match="STEP_EPOCHS"):
        resolve_schedule(make_cfg(tmp_path, "", "SOLVER.STEP_EPOCHS", (60, 30)), 100)


def test_resume_continues_with_optimizer_state(tmp_path, shapes_root):
    cfg = make_cfg(
        tmp_path, shapes_root, "MODEL.BIO.RULE", "feedback_alignment", "SOLVER.MAX_ITER", 2,
        "TEST.EVAL_PERIOD", 100,
    )  # fmt: skip
    first = ClassificationTrainer(cfg)
    first.resume_or_load(resume=False)
    first.train()
    saved = torch.load(tmp_path / "model_final.pth", weights_only=False)
    assert saved["trainer"]["iteration"] == 1

    cfg = make_cfg(
        tmp_path, shapes_root, "MODEL.BIO.RULE", "feedback_alignment", "SOLVER.MAX_ITER", 3,
        "TEST.EVAL_PERIOD", 100, "MODEL.BIO.SEED", 5,
    )  # fmt: skip
    second = ClassificationTrainer(cfg)
    second.resume_or_load(resume=True)
    assert second.start_iter == 2 and second.data_loader.start_iter == 2
    model = second.unwrapped_model
    for k, v in model.state_dict().items():  # weights, BN statistics, feedback buffers
        assert torch.equal(v, saved["model"][k]), k
    state = second.optimizer.state_dict()["state"]
    saved_state = saved["trainer"]["_trainer"]["optimizer"]["state"]
    assert len(state) == len(saved_state) > 0
    for i in state:
        assert torch.equal(state[i]["momentum_buffer"], saved_state[i]["momentum_buffer"])
    assert second.scheduler.last_epoch == saved["trainer"]["hooks"]["LRScheduler"]["last_epoch"]
    second.train()
    iterations = [m["iteration"] for m in metrics(tmp_path) if "total_loss" in m]
    assert iterations == [1, 2] and second.iter == 3


def test_a_checkpoint_with_the_step_state_at_the_top_level_resumes(tmp_path, shapes_root):
    """A trainer checkpoint of a loop on SimpleTrainer itself (detectron2's lazyconfig_train_net,
    and this trainer before it held an inner step trainer) holds the optimizer at the top level,
    not under "_trainer": it resumes all the same."""
    cfg = make_cfg(tmp_path, shapes_root, "SOLVER.MAX_ITER", 2, "TEST.EVAL_PERIOD", 100)
    first = ClassificationTrainer(cfg)
    first.resume_or_load(resume=False)
    first.train()
    path = tmp_path / "model_final.pth"
    saved = torch.load(path, weights_only=False)
    step = saved["trainer"].pop("_trainer")
    saved["trainer"]["optimizer"] = step["optimizer"]  # SimpleTrainer.state_dict's layout
    torch.save(saved, path)

    cfg = make_cfg(tmp_path, shapes_root, "SOLVER.MAX_ITER", 3, "TEST.EVAL_PERIOD", 100)
    second = ClassificationTrainer(cfg)
    second.resume_or_load(resume=True)
    assert second.start_iter == 2 and second._trainer.iter == 1
    state, saved_state = second.optimizer.state_dict()["state"], step["optimizer"]["state"]
    assert len(state) == len(saved_state) > 0
    for i in state:
        assert torch.equal(state[i]["momentum_buffer"], saved_state[i]["momentum_buffer"])
    assert second.scheduler.last_epoch == saved["trainer"]["hooks"]["LRScheduler"]["last_epoch"]


def test_after_backward_hooks_see_every_step(tmp_path, shapes_root):
    """The inner step trainer passes after_backward on to the trainer's hooks (detectron2's
    DefaultTrainer does not), between the backward pass and the optimizer step."""
    trainer = ClassificationTrainer(make_cfg(tmp_path, shapes_root, "TEST.EVAL_PERIOD", 100))
    conv = trainer.unwrapped_model.backbone.bottom_up.stem.conv1
    seen = []

    class AfterBackward(HookBase):
        def after_backward(self):
            seen.append((self.trainer.iter, conv.weight.grad is not None, conv.weight.clone()))

    trainer.register_hooks([AfterBackward()])
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert [(it, grad) for it, grad, _ in seen] == [(0, True), (1, True)]
    assert not torch.equal(seen[0][2], seen[1][2])  # the step came after the first call


def test_loader_resumes_the_same_batches(shapes_root):
    classes, samples = scan_split(shapes_root, "train")
    dataset = ImageFolderDataset(samples, classes, build_classification_transform(True, 32))

    def labels(start, n):
        loader = ClassificationTrainLoader(dataset, 8, seed=3)
        loader.set_start_iter(start)
        it = iter(loader)
        return [next(it)[1].tolist() for _ in range(n)]

    full = labels(0, 8)  # 5 batches per epoch: crosses into the second epoch
    assert labels(3, 5) == full[3:]
    assert labels(6, 2) == full[6:]
    assert sorted(sum(full[:5], [])) == sorted(label for _, label in samples)  # each image once


def test_non_finite_loss_stops_before_the_step(tmp_path, shapes_root):
    cfg = make_cfg(tmp_path, shapes_root, "SOLVER.MAX_ITER", 3, "SOLVER.CHECKPOINT_PERIOD", 1)
    trainer = ClassificationTrainer(cfg)
    trainer.resume_or_load(resume=False)
    model = trainer.unwrapped_model

    def poison(module, args, output):
        if trainer.iter == 1:
            return {k: v * float("nan") for k, v in output.items()}

    model.register_forward_hook(poison, prepend=True)  # before the trainer's check: the model's own
    with pytest.raises(FloatingPointError, match="iteration 1 .*model_0000000.pth. is intact"):
        trainer.train()
    saved = torch.load(tmp_path / "model_0000000.pth", weights_only=False)["model"]
    for k, v in model.state_dict().items():
        if k.endswith("weight") or k.endswith("bias"):
            assert torch.equal(v, saved[k]), k  # no step after the last checkpoint
    assert not os.path.exists(tmp_path / "model_final.pth")


# --- Evaluation ---------------------------------------------------------------------------------


def test_eval_only_known_accuracies(tmp_path):
    # 10 val images in 6 classes; a model whose scores rank the classes 1 > 0 > 2 > 3 > 4 > 5
    # whatever the image: top-1 = images of class 1, top-5 = all but those of class 5.
    counts = [3, 1, 2, 1, 1, 2]
    for c, n in enumerate(counts):
        for i in range(n):
            write_image(str(tmp_path / "data" / "val" / f"class{c}" / f"{i}.JPEG"))
    cfg = make_cfg(tmp_path / "out", str(tmp_path / "data"), "SOLVER.IMS_PER_BATCH", 4)
    model = build_classifier(cfg, num_classes=6)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([5.0, 6.0, 4.0, 3.0, 2.0, 1.0]))
    DetectionCheckpointer(model, str(tmp_path)).save("ranked")

    cfg = make_cfg(
        tmp_path / "out", str(tmp_path / "data"), "SOLVER.IMS_PER_BATCH", 4,
        "MODEL.WEIGHTS", str(tmp_path / "ranked.pth"),
    )  # fmt: skip
    results = ClassificationTrainer.evaluate(cfg)
    assert results["val"]["top1"] == pytest.approx(100.0 * 1 / 10)
    assert results["val"]["top5"] == pytest.approx(100.0 * 8 / 10)


def test_checkpoint_of_another_architecture_is_an_error(tmp_path, shapes_root):
    alex_cfg = make_cfg(
        tmp_path, shapes_root, "MODEL.CLASSIFIER.NAME", "AlexNet", "INPUT.CLASSIFICATION.SIZE", 64
    )
    out = tmp_path / "out"
    out.mkdir()
    DetectionCheckpointer(AlexNet(alex_cfg, num_classes=10, width=64), str(out)).save("model_final")
    path = str(out / "model_final.pth")
    with open(path, "rb") as f:
        content = f.read()

    cfg = make_cfg(out, shapes_root, "MODEL.WEIGHTS", path)
    pattern = r"model_final.pth.*does not fit ResNetClassifier.*missing keys.*stem.conv1"
    with pytest.raises(ValueError, match=pattern):
        ClassificationTrainer.evaluate(cfg)
    trainer = ClassificationTrainer(make_cfg(out, shapes_root))
    with pytest.raises(ValueError, match=r"unexpected keys \['backbone.bottom_up.conv1.weight'"):
        trainer.resume_or_load(resume=True)  # OUTPUT_DIR's last checkpoint is AlexNet's
    with open(path, "rb") as f:
        assert f.read() == content
    assert [f for f in os.listdir(out) if f.endswith(".pth")] == ["model_final.pth"]


# --- Hand-off to the detector -------------------------------------------------------------------


def test_checkpoint_initialises_retinanet_resnet18_backbone(tmp_path, shapes_root):
    from detectron2.modeling import build_model

    cfg = make_cfg(
        tmp_path, shapes_root, "MODEL.BIO.RULE", "feedback_alignment", "SOLVER.MAX_ITER", 2
    )
    trainer = ClassificationTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    path = str(tmp_path / "model_final.pth")
    checkpoint = torch.load(path, weights_only=False)["model"]

    # The COCO config of the paper's set-up, pointed at this checkpoint.
    det_cfg = get_cfg()
    add_bio_config(det_cfg)
    det_cfg.merge_from_file(
        os.path.join(REPO, "configs/COCO-Detection/retinanet_R_18_FPN_feedback_alignment_1x.yaml")
    )
    # The classifier's scale, so that the seeds alone can be checked to agree before loading.
    det_cfg.merge_from_list(
        ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", path, "MODEL.BIO.SCALE", "kaiming"]
    )
    detector = build_model(det_cfg)
    assert type(detector).__name__ == "RetinaNet"
    bottom_up = {
        k: v for k, v in detector.state_dict().items() if k.startswith("backbone.bottom_up.")
    }
    # Same module names and seed: the fixed feedback weights are the classifier's already.
    feedback = [k for k in bottom_up if k.endswith(".feedback")]
    assert len(feedback) == 20
    assert all(torch.equal(bottom_up[k], checkpoint[k]) for k in feedback)

    DetectionCheckpointer(detector).load(det_cfg.MODEL.WEIGHTS)
    bottom_up = {
        k: v for k, v in detector.state_dict().items() if k.startswith("backbone.bottom_up.")
    }
    assert len(bottom_up) > 100 and set(bottom_up) <= set(checkpoint)
    for k, v in bottom_up.items():  # parameters, BN statistics, feedback buffers
        assert torch.equal(v, checkpoint[k]), k
    assert not any(k.startswith("backbone.bottom_up.") for k in set(checkpoint) - set(bottom_up))


# --- Bad input ----------------------------------------------------------------------------------


def test_missing_root_names_key_and_env(tmp_path, monkeypatch):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"nowhere.*from DATASETS.IMAGENET_ROOT"):
        classification_root(make_cfg(tmp_path, missing))
    monkeypatch.setenv("IMAGENET_ROOT", missing)
    with pytest.raises(FileNotFoundError, match=r"nowhere.*from \$IMAGENET_ROOT"):
        classification_root(make_cfg(tmp_path, ""))


def test_no_root_falls_back_to_shapes(tmp_path, monkeypatch, shapes_root, caplog):
    monkeypatch.delenv("IMAGENET_ROOT", raising=False)
    monkeypatch.setenv("BIO_DETECTRON_DATASETS", os.path.dirname(shapes_root))
    cfg = make_cfg(
        tmp_path, "", "DATASETS.SHAPES_CLASSIFICATION.IMAGE_SIZE", 32,
        "DATASETS.SHAPES_CLASSIFICATION.NUM_TRAIN_PER_CLASS", 4,
        "DATASETS.SHAPES_CLASSIFICATION.NUM_VAL_PER_CLASS", 2,
    )  # fmt: skip
    with caplog.at_level("INFO", logger="bio_detectron"):
        assert classification_root(cfg) == shapes_root
    assert "using the generated shapes classification folder" in caplog.text


def test_bad_folders_are_named(tmp_path):
    root = tmp_path / "data"
    with pytest.raises(FileNotFoundError, match=r"data/train'? does not exist"):
        scan_split(str(root), "train")
    (root / "train").mkdir(parents=True)
    (root / "train" / "README.txt").write_text("not a class")
    with pytest.raises(FileNotFoundError, match=r"data/train'? has no class folders"):
        scan_split(str(root), "train")
    write_image(str(root / "train" / "cat" / "1.JPEG"))
    (root / "train" / "dog").mkdir()
    (root / "train" / "dog" / "notes.txt").write_text("no image")
    with pytest.raises(FileNotFoundError, match=r"train/dog'? holds no image"):
        scan_split(str(root), "train")
    write_image(str(root / "train" / "dog" / "1.jpg"))
    write_image(str(root / "val" / "cat" / "1.JPEG"))
    with pytest.raises(ValueError, match=r"missing \['dog'\]"):
        scan_split(str(root), "val", classes=["cat", "dog"])
    write_image(str(root / "val" / "dog" / "1.JPEG"))
    cfg = make_cfg(tmp_path, str(root), "MODEL.CLASSIFIER.NUM_CLASSES", 3)
    with pytest.raises(ValueError, match="NUM_CLASSES=3 but the dataset has 2"):
        ClassificationTrainer(cfg)


def test_unreadable_image_error_or_skip(tmp_path):
    root = tmp_path / "data"
    for i in range(3):
        write_image(str(root / "train" / "a" / f"{i}.JPEG"))
    bad = root / "train" / "a" / "3.JPEG"
    bad.write_bytes(b"\xff\xd8 not a jpeg")
    cfg = make_cfg(tmp_path, str(root))
    dataset = build_classification_dataset(cfg, "train")
    with pytest.raises(UnreadableImageError, match=r"3.JPEG.*DATALOADER.SKIP_UNREADABLE"):
        dataset[3]

    cfg = make_cfg(tmp_path, str(root), "DATALOADER.SKIP_UNREADABLE", True)
    dataset = build_classification_dataset(cfg, "train")
    assert dataset[3] is None and dataset.num_skipped == 1
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=4, num_workers=1, collate_fn=collate_classification
    )
    images, labels = next(iter(loader))
    assert images.shape == (3, 3, 32, 32) and images.dtype == torch.uint8
    assert dataset.num_skipped == 2  # counted in the worker process, seen here


# --- Several processes --------------------------------------------------------------------------


@pytest.mark.slow
def test_two_cpu_processes_from_the_command_line(tmp_path, shapes_root):
    # tests/test_distributed.py checks that processes agree; this checks the tool's --num-gpus.
    # One thread per process: two processes share the test machine's cores.
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable, os.path.join(REPO, "tools", "train_imagenet.py"),
        "--config-file", os.path.join(REPO, "configs", "ImageNet", "resnet18_sign_symmetry.yaml"),
        "--num-gpus", "2", "MODEL.DEVICE", "cpu",
        "DATASETS.IMAGENET_ROOT", shapes_root, "INPUT.CLASSIFICATION.SIZE", "32",
        "SOLVER.IMS_PER_BATCH", "4", "SOLVER.MAX_ITER", "1", "DATALOADER.NUM_WORKERS", "0",
        "OUTPUT_DIR", str(tmp_path),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = metrics(tmp_path)[-1]
    # 20 val images split over 2 processes, every one counted once
    assert final["iteration"] == 1 and 0 <= final["val/top1"] <= 100
    assert (final["val/top1"] * 20 / 100) == pytest.approx(round(final["val/top1"] * 20 / 100))
    assert os.path.isfile(tmp_path / "model_final.pth")

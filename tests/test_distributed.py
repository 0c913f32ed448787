"""Several processes train the same model: every process has the same feedback tensor B and
the same parameters after training, for every rule with a feedback tensor and both scales, in
both trainers, through BioPlausible in stock detectron2's DefaultTrainer, and from pretrained
weights.

One 2-process CPU launch (gloo) runs all cases; each process hashes every tensor and the hashes
are all-gathered and compared. default_setup seeds process r with SEED + r, so each process builds
different initial weights; only the mechanism under test can make them agree.
"""

import hashlib
import json
import os
import sys

import pytest
import torch

import bio_detectron as bd
from bio_detectron.core.rules import RULE_REGISTRY, layer_seed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))
INSTANT = os.path.join(
    REPO, "configs/quick_schedules/retinanet_R_18_FPN_sign_symmetry_instant_test.yaml"
)
CLASSIFIER = os.path.join(REPO, "configs/ImageNet/resnet18_sign_symmetry.yaml")

WITH_FEEDBACK = sorted(name for name, cls in RULE_REGISTRY if cls.feedback_kind is not None)
SCALES = ("kaiming", "mean_abs")
# Train few iterations, skip evaluation (no test set) and the probe: only agreement is checked.
COMMON = [
    "SOLVER.MAX_ITER", "3", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.CHECKPOINT_PERIOD", "100",
    "MODEL.BIO.ALIGNMENT.PERIOD", "0", "DATASETS.TEST", "()", "SEED", "7",
]  # fmt: skip


# Starts processes or installs the package: part of `make test`, not `make test-fast`.
pytestmark = pytest.mark.slow


def _digests(model):
    """Name -> sha1 of the bytes of every parameter and every ``feedback`` tensor."""
    tensors = dict(model.named_parameters())
    tensors.update((n, b) for n, b in model.named_buffers() if n.endswith(".feedback"))
    return {
        n: hashlib.sha1(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
        for n, t in tensors.items()
    }


def _train(case, output_dir):
    """Train one case in this process; returns the trained, unwrapped model."""
    from detectron2.engine import DefaultTrainer, default_argument_parser, defaults
    from torch.nn.parallel import DistributedDataParallel

    from bio_detectron.engine import BioTrainer
    from bio_detectron.engine.ddp import create_ddp_model

    kind, opts = case["kind"], case["opts"] + ["OUTPUT_DIR", output_dir]
    if kind == "classification":
        import train_imagenet

        from bio_detectron.engine.classification import build_classification_trainer

        args = default_argument_parser().parse_args(["--config-file", CLASSIFIER, *opts])
        trainer = build_classification_trainer(train_imagenet.setup(args))
    else:
        import train_net

        args = default_argument_parser().parse_args(["--config-file", INSTANT, *opts])
        cfg = train_net.setup(args)
        if kind == "stock_trainer":  # BioPlausible in detectron2's own DefaultTrainer
            # Stock DefaultTrainer passes device_ids to DDP, which CPU modules refuse: for this
            # CPU test only, its module-level create_ddp_model is ours while it is built.
            stock_create_ddp_model = defaults.create_ddp_model
            defaults.create_ddp_model = create_ddp_model
            try:
                trainer = DefaultTrainer(cfg)
            finally:
                defaults.create_ddp_model = stock_create_ddp_model
        else:
            trainer = BioTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    model = trainer.model
    return model.module if isinstance(model, DistributedDataParallel) else model


def _agreement_worker(cases, output_dir):
    from detectron2.utils import comm

    torch.set_num_threads(1)
    report = {}
    for i, case in enumerate(cases):
        model = _train(case, os.path.join(output_dir, str(i)))
        gathered = comm.all_gather(_digests(model))
        report[case["name"]] = {
            "compared": sorted(gathered[0]),
            "differ": sorted(
                n for n in gathered[0] if any(g[n] != gathered[0][n] for g in gathered)
            ),
            "compiled": [n for n, m in model.named_modules() if getattr(m, "_bio_compiled", 0)],
        }
        if comm.is_main_process():
            torch.save(
                {k: v for k, v in model.state_dict().items() if k.endswith(".feedback")},
                os.path.join(output_dir, f"{i}_feedback.pth"),
            )
    if comm.is_main_process():
        with open(os.path.join(output_dir, "report.json"), "w") as f:
            json.dump(report, f)


def _cases(pretrained, shapes_root):
    cases = []
    for rule in WITH_FEEDBACK:
        for scale in SCALES:
            opts = ["MODEL.BIO.RULE", rule, "MODEL.BIO.SCALE", scale]
            cases.append({"name": f"{rule}/{scale}", "kind": "detection", "opts": COMMON + opts})
    cases.append(
        {
            "name": "sign_symmetry/mean_abs",
            "kind": "detection",
            "opts": COMMON + ["MODEL.BIO.RULE", "sign_symmetry"],
        }
    )
    cases.append(
        {
            "name": "pretrained: feedback_alignment_signed_init/mean_abs",
            "kind": "detection",
            "opts": COMMON
            + ["MODEL.BIO.RULE", "feedback_alignment_signed_init", "MODEL.WEIGHTS", pretrained],
        }
    )
    cases.append(
        {
            "name": "BioPlausible in DefaultTrainer: feedback_alignment/mean_abs",
            "kind": "stock_trainer",
            "opts": COMMON
            + [
                "MODEL.META_ARCHITECTURE",
                "BioPlausible",
                "MODEL.BIO.BASE_META_ARCHITECTURE",
                "RetinaNet",
                "MODEL.BACKBONE.NAME",
                "build_retinanet_resnet_fpn_backbone",
                "MODEL.BIO.RULE",
                "feedback_alignment",
            ],  # fmt: skip
        }
    )
    compiled = ["MODEL.BIO.COMPILE.ENABLED", "True", "MODEL.BIO.COMPILE.BACKEND", "aot_eager"]
    cases.append(
        {
            "name": "compiled after wrapping: kolen_pollack/mean_abs",
            "kind": "detection",
            "opts": COMMON + ["MODEL.BIO.RULE", "kolen_pollack", *compiled],
        }
    )
    classification = [
        "MODEL.DEVICE", "cpu", "DATASETS.IMAGENET_ROOT", shapes_root,
        "INPUT.CLASSIFICATION.SIZE", "32", "SOLVER.IMS_PER_BATCH", "4", "SOLVER.MAX_ITER", "2",
        "DATALOADER.NUM_WORKERS", "0", "TEST.EVAL_PERIOD", "100", "SEED", "7",
    ]  # fmt: skip
    cases.append(
        {
            "name": "classification compiled: kolen_pollack/mean_abs",
            "kind": "classification",
            "opts": ["MODEL.BIO.RULE", "kolen_pollack", *compiled, *classification],
        }
    )
    cases.append(
        {
            "name": "classification: feedback_alignment/mean_abs",
            "kind": "classification",
            "opts": [
                "MODEL.BIO.RULE",
                "feedback_alignment",
                "MODEL.BIO.SCALE",
                "mean_abs",
                "MODEL.DEVICE",
                "cpu",
                "DATASETS.IMAGENET_ROOT",
                shapes_root,
                "INPUT.CLASSIFICATION.SIZE",
                "32",
                "SOLVER.IMS_PER_BATCH",
                "4",
                "SOLVER.MAX_ITER",
                "2",
                "DATALOADER.NUM_WORKERS",
                "0",
                "TEST.EVAL_PERIOD",
                "100",
                "SEED",
                "7",
            ],  # fmt: skip
        }
    )
    return cases


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A stock RetinaNet checkpoint (no feedback tensors), weights unlike any fresh init."""
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    cfg = get_cfg()
    bd.add_bio_config(cfg)
    cfg.merge_from_file(INSTANT)
    cfg.MODEL.META_ARCHITECTURE = "RetinaNet"
    cfg.MODEL.BACKBONE.NAME = "build_retinanet_resnet_fpn_backbone"
    torch.manual_seed(123)
    model = build_model(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)
    path = str(tmp_path_factory.mktemp("pretrained") / "stock.pth")
    torch.save({"model": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def agreement(tmp_path_factory, pretrained):
    from bio_detectron.data import classification_folder
    from bio_detectron.engine import launch

    root = classification_folder(
        "shapes", root=str(tmp_path_factory.mktemp("cls")), image_size=32,
        num_train_per_class=4, num_val_per_class=2,
    )  # fmt: skip
    out = str(tmp_path_factory.mktemp("agreement"))
    cases = _cases(pretrained, root)
    env = {"CUDA_VISIBLE_DEVICES": ""}  # gloo on CPU even on a machine with a GPU
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        launch(_agreement_worker, 2, dist_url="auto", args=(cases, out))
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    with open(os.path.join(out, "report.json")) as f:
        return {"report": json.load(f), "cases": cases, "dir": out}


def test_every_case_agrees_across_processes(agreement):
    report = agreement["report"]
    assert set(report) == {c["name"] for c in agreement["cases"]}
    for name, r in report.items():
        feedback = [n for n in r["compared"] if n.endswith(".feedback")]
        params = [n for n in r["compared"] if not n.endswith(".feedback")]
        with_feedback = not name.startswith("sign_symmetry/")
        # RetinaNet-R18 of the instant config: 34 layers; the classifier: 20 convs + fc (its
        # last layer stays on backprop by default).
        expected = 20 if name.startswith("classification") else 34
        assert len(feedback) == (expected if with_feedback else 0), name
        assert len(params) > 60, name
        expected = [""] if name.startswith("classification") else ["backbone", "head"]
        assert r["compiled"] == (expected if "compiled" in name else []), name
        assert r["differ"] == [], (
            f"{name}: {len(r['differ'])} tensors differ, e.g. {r['differ'][:3]}"
        )


def test_pretrained_feedback_is_made_from_the_loaded_weights(agreement, pretrained):
    i = [c["name"] for c in agreement["cases"]].index(
        "pretrained: feedback_alignment_signed_init/mean_abs"
    )
    feedback = torch.load(os.path.join(agreement["dir"], f"{i}_feedback.pth"))
    weights = torch.load(pretrained)["model"]
    assert len(feedback) == 34
    for key, B in feedback.items():
        W = weights[key[: -len("feedback")] + "weight"]
        torch.testing.assert_close(B, torch.sign(W) * W.abs().mean(), rtol=1e-6, atol=0)


def _ddp_feedback_worker(checkpoint, output_dir):
    """create_ddp_model on a plain PyTorch model: each process converts its own random init."""
    from detectron2.utils import comm
    from torch import nn

    from bio_detectron.engine.ddp import create_ddp_model

    torch.set_num_threads(1)
    torch.manual_seed(comm.get_rank())
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    made = bd.convert_model(net, "feedback_alignment_signed_init", scale="mean_abs")
    restored = bd.convert_model(nn.Linear(5, 3), "kolen_pollack")
    restored.load_state_dict(torch.load(checkpoint))  # a trained B, the same in every process
    before = made[0].feedback.clone()
    create_ddp_model(made, broadcast_buffers=False)
    create_ddp_model(restored, broadcast_buffers=False)
    gathered = comm.all_gather(
        {
            "made": {n: b for n, b in made.named_buffers() if n.endswith("feedback")},
            "weights": {n: p.detach() for n, p in made.named_parameters()},
            "made_before": before,
            "restored": restored.feedback.detach(),
        }
    )
    if comm.is_main_process():
        torch.save(gathered, os.path.join(output_dir, "gathered.pth"))


def test_ddp_wrapping_makes_feedback_from_the_broadcast_weights_and_keeps_a_checkpoints(
    tmp_path, monkeypatch
):
    from torch import nn

    from bio_detectron.engine import launch

    torch.manual_seed(9)
    trained = bd.convert_model(nn.Linear(5, 3), "kolen_pollack")
    with torch.no_grad():
        trained.feedback.add_(1.0)  # as training would move it: not what W would make
    checkpoint = str(tmp_path / "kp.pth")
    torch.save(trained.state_dict(), checkpoint)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # gloo on CPU even on a machine with a GPU
    launch(_ddp_feedback_worker, 2, dist_url="auto", args=(checkpoint, str(tmp_path)))
    rank0, rank1 = torch.load(str(tmp_path / "gathered.pth"))
    # Each process converted its own init (a B that depends on W differs) ...
    assert not torch.equal(rank0["made_before"], rank1["made_before"])
    # ... and has rank 0's weights and the B made from them after wrapping.
    for name, w in rank0["weights"].items():
        assert torch.equal(w, rank1["weights"][name]), name
    for name, b in rank0["made"].items():
        assert torch.equal(b, rank1["made"][name]), name
        w = rank0["weights"][name[: -len("feedback")] + "weight"]
        torch.testing.assert_close(b, torch.sign(w) * w.abs().mean(), rtol=1e-6, atol=0)
    assert len(rank0["made"]) == 2
    # A checkpoint's (trained) feedback is kept, not made again from W.
    assert torch.equal(rank0["restored"], trained.feedback.detach())
    assert torch.equal(rank1["restored"], trained.feedback.detach())


def _return_group_size(record):
    import torch.distributed as dist

    record.append(dist.get_world_size())


def _raise_in_group():
    raise ValueError("a failing training")


def test_a_launched_process_leaves_its_group_when_its_work_returns_or_raises(tmp_path):
    # detectron2's worker exits with the group open; with gloo a process can then abort
    # ("terminate called without an active exception") after its work was done.
    import torch.distributed as dist

    from bio_detectron.engine.launcher import run_then_leave_group

    for i, (work, args) in enumerate([(_return_group_size, ([],)), (_raise_in_group, ())]):
        store = f"file://{tmp_path}/store{i}"
        dist.init_process_group("gloo", init_method=store, rank=0, world_size=1)
        try:
            if work is _raise_in_group:
                with pytest.raises(ValueError, match="a failing training"):
                    run_then_leave_group(work, args)
            else:
                run_then_leave_group(work, args)
                assert args[0] == [1]  # it ran inside the group
            assert not dist.is_initialized()
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()


def test_one_process_launch_returns_the_result_and_makes_no_group():
    import torch.distributed as dist

    from bio_detectron.engine import launch

    assert launch(max, 1, args=(3, 7)) == 7  # detectron2's own launch returns None here
    assert not dist.is_initialized()


@pytest.mark.parametrize(
    "tool", ["train_net", "lazyconfig_train_net", "train_imagenet", "heldout_digits"]
)
def test_every_tool_starts_its_processes_with_our_launch(load_tool, tool):
    from bio_detectron.engine import launch

    assert load_tool(tool).launch is launch


def test_fixed_random_feedback_follows_seed_and_name(agreement):
    # feedback_alignment/kaiming: B ~ N(0, s^2) from the layer's own generator, whatever the
    # process or the initial weights.
    i = [c["name"] for c in agreement["cases"]].index("feedback_alignment/kaiming")
    feedback = torch.load(os.path.join(agreement["dir"], f"{i}_feedback.pth"))
    B = feedback["head.cls_subnet.0.feedback"]
    g = torch.Generator().manual_seed(layer_seed(0, "head.cls_subnet.0"))
    c_out, _, k_h, k_w = B.shape
    expected = torch.randn(B.shape, generator=g) * (2.0 / (k_h * k_w * c_out)) ** 0.5
    torch.testing.assert_close(B, expected)

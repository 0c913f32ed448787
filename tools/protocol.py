#!/usr/bin/env python
"""
``make protocol``: the seed paper's protocol on the photos set. For each rule, (1) pre-train a
ResNet-18 classifier with the rule on the photos classification folder, (2) train RetinaNet-R18
on the photos detection set from that backbone with the same rule, and (3) train the same
detector from scratch with the same total compute; then one table.

The runs, one folder each under ``--output-dir`` (detectron2's log is ``log.txt`` there):

* ``<rule>/classify<P>``: ``tools/train_imagenet.py`` with ``configs/ImageNet/resnet18_<rule>.yaml``
  and the schedule below, ``P`` iterations (``--pretrain-iters``);
* ``<rule>/detect<D>_from_classify<P>``: ``tools/train_net.py`` with
  ``configs/Photos-Detection/retinanet_R_18_FPN_<rule>.yaml``, ``MODEL.WEIGHTS`` the classifier's
  ``model_final.pth``, ``D`` iterations (``--iters``);
* ``<rule>/scratch<S>``: the same detector config from scratch, ``S`` iterations: the total
  compute of the two runs above (below).

A run whose folder holds its final result, trained by the same config, options and (for the
pre-trained detector) checkpoint, is reused and says so (``--rerun`` trains it again), as in
``tools/demo.py``. ``<output-dir>/protocol.json`` records every row.

**The pre-training schedule** (set here on top of the ImageNet config; ``--pretrain-opts``
overrides any of it):

* data: the generated photos folder (``DATASETS.GENERATED_CLASSIFICATION photos``), 300 training
  and 50 validation images per class at 64 px. An object's cut spans 50-90 % of the image side,
  32-58 px at 64 px: inside the 18-64 px the detector's objects span in its 128 px images, so
  the backbone learns its filters at the scale at which the detector meets the objects. 3000
  training objects are about as many as the detection set's 1000 images hold (2-5 each).
* crops: ``INPUT.CLASSIFICATION.SIZE 64`` (the whole image, not upsampled) and ``MIN_SCALE 0.35``
  instead of ImageNet's 0.08: a random crop keeps at least 59 % of the side, so it holds most of
  the object and enlarges it at most 1.7x, not 3.5x.
* batch 32, so that a classification iteration sees the same pixels as a detection iteration
  (32 x 64^2 = 8 x 128^2 = 131072). The learning rate scales linearly from the config's 0.1 at
  256 (0.0125), with the config's steps at 1/3 and 2/3 of the run (epochs 30 and 60 of 90);
  ``P = 1600`` is 17 epochs of 93 iterations.
* the detection configs' precision (``SOLVER.AMP.ENABLED``: bfloat16 on CPUs with it), device
  (cpu), main-process loading and ``SEED 0``; validation top-1 once, at the end.
* the detector config's ``MODEL.BIO.SCALE``: the feedback tensors the detector loads must have
  been made by its rule *with its options* (a layer whose checkpoint tensor came from other
  options makes it again, and the hand-off would lose it).

**Compute** is counted in backbone input pixels: images per batch x pixels per image x
iterations. A ResNet's cost grows with the pixels it sees, so this is the backbone's share of
both runs; the detector's FPN and head cost more per pixel than the classifier's one linear
layer, which this count leaves out, so the scratch run gets at least the FLOPs of the two runs
it is compared with (the comparison favours training from scratch, if anything). With the
defaults a pre-training iteration counts as one detection iteration: ``S = P + D``.

Direct feedback alignment is refused: its feedback tensors map the network's output error (the
classifier's 10 logits) and do not fit the detector's outputs. Before a detector trains from a
checkpoint, :func:`check_handoff` builds it as ``tools/train_net.py`` does, loads the checkpoint
as detectron2 does, and checks that every parameter, BatchNorm statistic and feedback tensor of
``backbone.bottom_up`` equals the checkpoint's, and that both learn with the same rule.

    python tools/protocol.py --rules backprop sign_symmetry kolen_pollack
    python tools/protocol.py --rules sign_symmetry --iters 800 --pretrain-iters 800 -- SEED 1
"""

import argparse
import glob
import json
import logging
import os
import re
import sys

from demo import REPO, finished_result, finished_row, print_table, run_command, run_tool, train

CLASSIFY = os.path.join(REPO, "configs", "ImageNet", "resnet18_{}.yaml")
DETECT = os.path.join(REPO, "configs", "Photos-Detection", "retinanet_R_18_FPN_{}.yaml")
# Rules whose hand-off cannot carry the feedback tensors, and why.
REFUSED = {
    "direct_feedback_alignment": "its feedback tensors map the classifier's output error (10 "
    "logits), which the detector's outputs do not match",
}
PRETRAIN_OPTS = [
    "MODEL.DEVICE", "cpu",
    "DATASETS.GENERATED_CLASSIFICATION", "photos",
    "DATASETS.SHAPES_CLASSIFICATION.IMAGE_SIZE", "64",
    "DATASETS.SHAPES_CLASSIFICATION.NUM_TRAIN_PER_CLASS", "300",
    "DATASETS.SHAPES_CLASSIFICATION.NUM_VAL_PER_CLASS", "50",
    "INPUT.CLASSIFICATION.SIZE", "64",
    "INPUT.CLASSIFICATION.MIN_SCALE", "0.35",
    "SOLVER.IMS_PER_BATCH", "32",
    "SOLVER.AMP.ENABLED", "True",
    "DATALOADER.NUM_WORKERS", "0",
    "SEED", "0",
]  # fmt: skip
# Keys this tool sets per run; an option of the user may not set them.
OWN_KEYS = ("SOLVER.MAX_ITER", "MODEL.WEIGHTS", "OUTPUT_DIR")
HEADER = (
    "| rule | scratch AP | pretrained AP | pretrain top-1 | scratch / backprop "
    "| pretrained / backprop | iterations (scratch; pretrain + detection) |"
)


def classification_cfg(config, opts):
    """The merged config ``tools/train_imagenet.py`` trains with (``config`` + ``opts``)."""
    from detectron2.config import get_cfg

    from bio_detectron.config import add_bio_config, add_classification_config

    cfg = get_cfg()
    add_bio_config(cfg)
    add_classification_config(cfg)
    cfg.merge_from_file(config)
    cfg.merge_from_list(list(opts))
    return cfg


def detection_cfg(config, opts):
    """The merged config ``tools/train_net.py`` trains with (``config`` + ``opts``)."""
    from detectron2.config import get_cfg

    import bio_detectron  # noqa: F401  (registers the meta-architectures and datasets)
    from bio_detectron.config import add_bio_config

    cfg = get_cfg()
    add_bio_config(cfg)
    cfg.merge_from_file(config)
    cfg.merge_from_list(list(opts))
    return cfg


def pixels_per_iteration(cfg, detection):
    """Images per batch x pixels per image of a training iteration (the photos set's images and
    the classifier's crops are square)."""
    if not detection:
        return cfg.SOLVER.IMS_PER_BATCH * cfg.INPUT.CLASSIFICATION.SIZE**2
    sizes = list(cfg.INPUT.MIN_SIZE_TRAIN)
    if len(sizes) != 1:
        raise ValueError(f"INPUT.MIN_SIZE_TRAIN={sizes}: the compute count needs one training size")
    return cfg.SOLVER.IMS_PER_BATCH * min(sizes[0], cfg.INPUT.MAX_SIZE_TRAIN) ** 2


def backbone_rule(cfg):
    """The rule and options of the backbone's layers in ``cfg`` ("sign_symmetry(scale=...)")."""
    from bio_detectron.modeling.parts import rules_from_cfg

    return rules_from_cfg(cfg)["backbone"].tag()


def check_rule(cls_cfg, det_cfg, cls_name, det_name):
    """
    Raises:
        ValueError: the classifier's backbone (``cls_cfg``, named ``cls_name``) learns with
            another rule, or other rule options, than the detector's (``det_cfg``, ``det_name``).
    """
    trained, learns = backbone_rule(cls_cfg), backbone_rule(det_cfg)
    if trained != learns:
        raise ValueError(
            f"{cls_name} learns with {trained}, but the detector's backbone learns with {learns} "
            f"({det_name}): a backbone is handed only to its own rule with its own options"
        )


def check_handoff(det_cfg, weights, det_config="the detector config"):
    """
    Build the detector of ``det_cfg`` as ``tools/train_net.py`` does, load ``weights`` (a
    classifier's ``model_final.pth``, its run's ``config.yaml`` beside it) as detectron2's
    checkpointer does, and check the hand-off.

    Raises:
        ValueError: the classifier's backbone learnt with another rule (or rule options) than the
            detector's backbone learns with; or a parameter, BatchNorm statistic or feedback
            tensor of ``backbone.bottom_up`` is not in the file, differs from it after the load,
            or is in the file but not in the detector. The message names the file and the keys.

    Returns:
        dict: how many tensors of each kind ("parameters", "BN statistics", "feedback") the
        detector's backbone took from the file.
    """
    import torch
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    from bio_detectron.core.checkpointing import METADATA_KEY

    recorded = os.path.join(os.path.dirname(os.path.abspath(weights)), "config.yaml")
    if not os.path.isfile(recorded):
        raise ValueError(f"{weights}: no config.yaml beside it says which rule trained it")
    check_rule(classification_cfg(recorded, []), det_cfg, f"{weights} (MODEL.BIO of {recorded})",
               det_config)  # fmt: skip
    saved = torch.load(weights, map_location="cpu", weights_only=False)["model"]
    # The file's own word: the rule that made each feedback tensor, saved with it.
    learns = backbone_rule(det_cfg)
    made = getattr(saved, "_metadata", {})
    other = sorted(m for m, v in made.items() if v.get(METADATA_KEY, learns) != learns)
    if other:
        raise ValueError(
            f"{weights}: the feedback tensors of {other[:4]} were made by "
            f"{made[other[0]][METADATA_KEY]}, but the detector's backbone learns with {learns}"
        )
    det_cfg = det_cfg.clone()
    det_cfg.MODEL.DEVICE = "cpu"
    detector = build_model(det_cfg)
    # detectron2 lists the head's keys as missing from a classifier's file; the check below says
    # what matters, the backbone, and the detector's own run logs the load in full.
    quiet = logging.getLogger("fvcore.common.checkpoint")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        DetectionCheckpointer(detector).load(weights)
    finally:
        quiet.setLevel(level)
    prefix = "backbone.bottom_up."
    loaded = {k: v for k, v in detector.state_dict().items() if k.startswith(prefix)}
    missing = [k for k in loaded if k not in saved]
    differ = [k for k in loaded if k in saved and not torch.equal(loaded[k], saved[k])]
    unused = [k for k in saved if k.startswith(prefix) and k not in loaded]
    if missing or differ or unused:
        raise ValueError(
            f"{weights} does not initialise the detector's backbone ({det_config}): "
            f"{len(missing)} keys not in the file {missing[:6]}, {len(differ)} keys that differ "
            f"from the file after loading {differ[:6]}, {len(unused)} backbone keys of the file "
            f"the detector does not have {unused[:6]}"
        )
    kinds = {"parameters": 0, "BN statistics": 0, "feedback": 0}
    params = {k for k, _ in detector.named_parameters()}
    for k in loaded:
        kind = "feedback" if k.endswith(".feedback") else "parameters" if k in params else None
        kinds[kind or "BN statistics"] += 1
    return kinds


def run_rule(rule, iters, pretrain_iters, output_dir, user_pretrain_opts, opts, rerun):
    """
    The three runs of one rule, each reused when finished.

    Args:
        rule: a rule with both configs.
        iters, pretrain_iters: D and P.
        output_dir: the runs go to ``<output_dir>/<rule>/...``.
        user_pretrain_opts, opts: config options of the pre-training and the detection runs.
        rerun: train runs that finished too.

    Returns:
        dict: the rule's entry of protocol.json.
    """
    det_config = DETECT.format(rule)
    det_cfg = detection_cfg(det_config, opts)
    pretrain_opts = [*PRETRAIN_OPTS, "MODEL.BIO.SCALE", str(det_cfg.MODEL.BIO.SCALE)]
    pretrain_opts += [*user_pretrain_opts, "SOLVER.MAX_ITER", str(pretrain_iters)]
    pretrain_opts += ["TEST.EVAL_PERIOD", str(pretrain_iters)]
    cls_config = CLASSIFY.format(rule)
    cls_cfg = classification_cfg(cls_config, pretrain_opts)
    try:  # before pre-training, which is the longer part
        check_rule(cls_cfg, det_cfg, f"{cls_config} with {pretrain_opts}", det_config)
    except ValueError as e:
        sys.exit(f"protocol: {e}")
    ratio = pixels_per_iteration(cls_cfg, False) / pixels_per_iteration(det_cfg, True)
    scratch_iters = iters + round(pretrain_iters * ratio)

    folder = os.path.abspath(os.path.join(output_dir, rule, f"classify{pretrain_iters}"))
    command = run_command(cls_config, pretrain_opts)
    top1 = None if rerun else finished_result(folder, command, "val/top1")
    if top1 is not None:
        print(f"[{rule}] pre-training: reusing the finished run in {folder}")
    else:
        top1 = run_tool(f"{rule} classify", "train_imagenet.py", cls_config, folder,
                        pretrain_opts, "val/top1")[0]  # fmt: skip
    weights = os.path.join(folder, "model_final.pth")
    try:
        kinds = check_handoff(det_cfg, weights, det_config)
    except ValueError as e:
        sys.exit(f"protocol: {e}")
    print(f"[{rule}] the detector's backbone takes from {weights}: " +
          ", ".join(f"{n} {kind}" for kind, n in kinds.items()))  # fmt: skip

    rows = {}
    for name, subfolder, run_opts in [
        ("pretrained", f"detect{iters}_from_classify{pretrain_iters}",
         [*opts, "MODEL.WEIGHTS", weights, "SOLVER.MAX_ITER", str(iters)]),
        ("scratch", f"scratch{scratch_iters}", [*opts, "SOLVER.MAX_ITER", str(scratch_iters)]),
    ]:  # fmt: skip
        run_folder = os.path.abspath(os.path.join(output_dir, rule, subfolder))
        row = None if rerun else finished_row(rule, run_folder, run_command(det_config, run_opts))
        if row is not None:
            print(f"[{rule}] {name}: reusing the finished run in {run_folder}")
        else:
            row = train(f"{rule} {name}", det_config, run_folder, run_opts)
        rows[name] = {"AP": float(row[1]), "output": run_folder}
    return {
        "rule": rule,
        "pretrain_iters": pretrain_iters,
        "iters": iters,
        "scratch_iters": scratch_iters,
        "pretrain_top1": top1["val/top1"],
        "pretrain_output": folder,
        "pretrained": rows["pretrained"],
        "scratch": rows["scratch"],
        "opts": list(opts),
        "pretrain_opts": pretrain_opts,
    }


def table(entries):
    """The protocol's rows, with each AP as a fraction of backprop's, when backprop is there."""
    base = next((e for e in entries if e["rule"] == "backprop"), None)

    def ratio(e, key):
        return f"{e[key]['AP'] / base[key]['AP']:.2f}" if base and base[key]["AP"] else "-"

    return [
        [e["rule"], f"{e['scratch']['AP']:.1f}", f"{e['pretrained']['AP']:.1f}",
         f"{e['pretrain_top1']:.1f}", ratio(e, "scratch"), ratio(e, "pretrained"),
         f"{e['scratch_iters']}; {e['pretrain_iters']} + {e['iters']}"]
        for e in entries
    ]  # fmt: skip


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rules", nargs="+", default=["backprop", "sign_symmetry"], help="rules to run"
    )
    parser.add_argument("--iters", type=int, default=1600, help="detection iterations, D")
    parser.add_argument(
        "--pretrain-iters", type=int, default=1600, help="classification iterations, P"
    )
    parser.add_argument("--output-dir", default="output/protocol", help="runs: DIR/<rule>/...")
    parser.add_argument("--rerun", action="store_true", help="train runs that already finished")
    parser.add_argument(
        "--pretrain-opts", nargs="+", default=[], metavar="KEY VALUE",
        help="config options of the pre-training runs, after this tool's schedule",
    )  # fmt: skip
    parser.add_argument("opts", nargs="*", help="config options KEY VALUE of the detection runs")
    args = parser.parse_args()
    both = sorted(
        re.search(r"FPN_(\w+)\.yaml$", p)[1]
        for p in glob.glob(DETECT.format("*"))
        if os.path.isfile(CLASSIFY.format(re.search(r"FPN_(\w+)\.yaml$", p)[1]))
    )
    known = [r for r in both if r not in REFUSED]
    for rule in args.rules:
        if rule in REFUSED:
            parser.error(f"--rules {rule}: {REFUSED[rule]}; rules the protocol runs: {known}")
        if rule not in known:
            parser.error(
                f"--rules {rule}: needs {CLASSIFY.format(rule)} and {DETECT.format(rule)}; "
                f"rules with both: {known}"
            )
    if args.iters < 1 or args.pretrain_iters < 1:
        parser.error(f"--iters {args.iters} --pretrain-iters {args.pretrain_iters}: must be >= 1")
    for name, opts in (("detection options", args.opts), ("--pretrain-opts", args.pretrain_opts)):
        own = [k for k in opts[0::2] if k in OWN_KEYS]
        if own or len(opts) % 2:
            parser.error(f"{name} {opts}: KEY VALUE pairs, without {list(OWN_KEYS)} (set here)")

    entries = [
        run_rule(r, args.iters, args.pretrain_iters, args.output_dir, args.pretrain_opts,
                 args.opts, args.rerun)
        for r in args.rules
    ]  # fmt: skip
    os.makedirs(args.output_dir, exist_ok=True)
    record = os.path.join(args.output_dir, "protocol.json")
    with open(record, "w") as f:
        json.dump({"runs": entries}, f, indent=1)
    print("\nbbox AP on photos_val; pre-training top-1 on the photos classification folder's val")
    print_table(HEADER, table(entries))
    print(f"\nRecord: {record}")


if __name__ == "__main__":
    main()

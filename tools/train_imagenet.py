#!/usr/bin/env python
"""
Train an ImageNet classifier (ResNet, AlexNet) with a biologically-plausible learning rule; its
``OUTPUT_DIR/model_final.pth`` initialises the detector's backbone (``MODEL.WEIGHTS``).

    IMAGENET_ROOT=/data/imagenet python tools/train_imagenet.py \\
        --config-file configs/ImageNet/resnet18_sign_symmetry.yaml --num-gpus 8
    python tools/train_imagenet.py --config-file ... --resume               # continue a run
    python tools/train_imagenet.py --config-file ... --eval-only MODEL.WEIGHTS out/model_final.pth

Without DATASETS.IMAGENET_ROOT or $IMAGENET_ROOT it trains on the generated shapes folder. The
configs ask for CUDA; ``MODEL.DEVICE cpu`` trains on the CPU, ``--num-gpus N`` starting N
processes (gloo).
"""

from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser, default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from bio_detectron.config import add_bio_config, add_classification_config, check_model_device
from bio_detectron.engine.classification import ClassificationTrainer, build_classification_trainer
from bio_detectron.engine.launcher import launch


def setup(args):
    cfg = get_cfg()
    add_bio_config(cfg)
    add_classification_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    check_model_device(cfg)
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="bio_detectron")
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        return ClassificationTrainer.evaluate(cfg, resume=args.resume)
    trainer = build_classification_trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )

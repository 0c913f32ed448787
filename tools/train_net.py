#!/usr/bin/env python
"""
Train and evaluate detectron2 models with biologically-plausible learning rules.

    python tools/train_net.py \\
        --config-file configs/Shapes-Detection/retinanet_R_18_FPN_sign_symmetry.yaml
    python tools/train_net.py --config-file ... --num-gpus 2              # 2 processes (CPU: gloo)
    python tools/train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/model_final.pth
"""

from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser, default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

import bio_detectron  # noqa: F401  (registers backbones, heads, meta-architectures, datasets)
from bio_detectron.config import add_bio_config, check_model_device
from bio_detectron.engine import BioTrainer, launch


def setup(args):
    cfg = get_cfg()
    add_bio_config(cfg)
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
        return BioTrainer.evaluate(cfg, resume=args.resume)
    trainer = BioTrainer(cfg)
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

#!/usr/bin/env python
"""
Train and evaluate detectron2 models from Python configs (LazyConfig) with biologically-plausible
learning rules: detectron2's tools/lazyconfig_train_net.py with bio_detectron's trainer pieces
(bio_detectron/engine/lazy.py). Overrides are "key=value" (detectron2's LazyConfig syntax).

    python tools/lazyconfig_train_net.py \\
        --config-file configs/Shapes-Detection/retinanet_R_18_FPN_sign_symmetry.py
    python tools/lazyconfig_train_net.py --config-file ... model.rule=feedback_alignment \\
        train.bio_alignment_period=20              # alignment metrics every 20 iterations
    python tools/lazyconfig_train_net.py --config-file ... --num-gpus 2    # 2 processes (CPU: gloo)
    python tools/lazyconfig_train_net.py --config-file ... --resume        # continue a run
    python tools/lazyconfig_train_net.py --config-file ... --eval-only \\
        train.init_checkpoint=output/shapes/retinanet_R_18_FPN_sign_symmetry/model_final.pth

train.device "cuda" on a machine without CUDA is an error; train.device=cpu trains on the CPU.
"""

from detectron2.engine import default_argument_parser, default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

import bio_detectron  # noqa: F401  (registers the datasets)
from bio_detectron.engine.launcher import launch
from bio_detectron.engine.lazy import LazyTrainer, do_train, load_lazy_config


def setup(args):
    cfg = load_lazy_config(args.config_file, args.opts)
    default_setup(cfg, args)
    setup_logger(cfg.train.output_dir, distributed_rank=comm.get_rank(), name="bio_detectron")
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        return LazyTrainer.evaluate(cfg, resume=args.resume)
    return do_train(cfg, resume=args.resume)


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

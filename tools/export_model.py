#!/usr/bin/env python
"""
Export a model trained with learning rules as a stock detectron2 model: OUTPUT/model_final.pth and
OUTPUT/config.yaml, which plain detectron2 (get_cfg, merge_from_file, DefaultPredictor) loads
without bio_detectron.

    python tools/export_model.py \\
        --config-file configs/Shapes-Detection/retinanet_R_18_FPN_sign_symmetry.yaml \\
        --weights output/shapes/retinanet_R_18_FPN_sign_symmetry/model_final.pth \\
        --output exported/retinanet_R_18_FPN_sign_symmetry [KEY VALUE ...]
"""

import argparse

from detectron2.config import get_cfg
from detectron2.utils.logger import setup_logger

import bio_detectron  # noqa: F401  (registers backbones, heads, meta-architectures)
from bio_detectron.config import add_bio_config
from bio_detectron.export import export_stock_model


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--config-file", required=True, help="the config the model was trained with"
    )
    parser.add_argument("--weights", required=True, help="a checkpoint of tools/train_net.py")
    parser.add_argument(
        "--output", required=True, help="folder for model_final.pth and config.yaml"
    )
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, help="KEY VALUE pairs merged into the config"
    )
    return parser.parse_args(argv)


def main(args):
    setup_logger(name="bio_detectron")
    cfg = get_cfg()
    add_bio_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    paths = export_stock_model(cfg, args.weights, args.output, source=args.config_file)
    print(f"Wrote {paths['weights']} and {paths['config']}")
    return paths


if __name__ == "__main__":
    main(parse_args())

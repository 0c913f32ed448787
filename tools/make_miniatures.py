#!/usr/bin/env python
"""
Write miniatures of the datasets Detectron2 registers by name, in their on-disk layouts, drawn by
the embedded shapes generator (tools/miniatures/): Pascal VOC 2007 and 2012, COCO
2017 (instances, person keypoints, panoptic with its semantic PNGs) and ADE20K. Point
DETECTRON2_DATASETS at the root and Detectron2's builtin names (voc_2007_test,
coco_2017_val_panoptic_separated, ade20k_sem_seg_val, ...) load them:

    python tools/make_miniatures.py --root datasets/miniatures
    DETECTRON2_DATASETS=datasets/miniatures python tools/train_net.py \\
        --config-file configs/VOC-Detection/retinanet_R_18_FPN_sign_symmetry.yaml \\
        MODEL.WEIGHTS "" MODEL.DEVICE cpu SOLVER.IMS_PER_BATCH 2 SOLVER.MAX_ITER 20 \\
        SOLVER.STEPS "()" SOLVER.WARMUP_ITERS 0 INPUT.MIN_SIZE_TRAIN "(96,)" \\
        INPUT.MAX_SIZE_TRAIN 96 INPUT.MIN_SIZE_TEST 96 INPUT.MAX_SIZE_TEST 96 \\
        DATALOADER.NUM_WORKERS 0 OUTPUT_DIR output/voc_miniature

A folder that exists under the root (a real VOC2007/, coco/, ...) is left as it is.
"""

import argparse
import os

from miniatures import LAYOUTS, write_miniatures

# What each layout makes loadable, for the summary.
NAMES = {
    "voc2007": "voc_2007_{trainval,train,val,test}",
    "voc2012": "voc_2012_{trainval,train,val}",
    "coco": "coco_2017_{train,val}, keypoints_coco_2017_{train,val}, "
    "coco_2017_{train,val}_panoptic{,_separated,_stuffonly}",
    "ade20k": "ade20k_sem_seg_{train,val}",
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="folder to point DETECTRON2_DATASETS at")
    parser.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=list(LAYOUTS))
    parser.add_argument("--image-size", type=int, default=96, help="image side in pixels")
    parser.add_argument("--num-train", type=int, default=32, help="images per train split")
    parser.add_argument(
        "--num-val", type=int, default=16, help="images per val split (and VOC 2007 test)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    written = write_miniatures(
        args.root, args.layouts, args.image_size, args.num_train, args.num_val, args.seed
    )
    for layout, (folder, new) in written.items():
        state = "written" if new else "exists, left as it is"
        print(f"{folder}: {state}; Detectron2's {NAMES[layout]}")
    print(f"Use them with: export DETECTRON2_DATASETS={os.path.abspath(args.root)}")
    return written


if __name__ == "__main__":
    main()

"""
RetinaNet-R18-FPN on COCO, every convolution learning with ``model.rule``: the LazyConfig twin of
configs/Base-BioRetinaNet.yaml, made of Detectron2's own ``configs/common`` pieces (model,
data, SGD, 1x schedule, train keys). Leaf files set the rule, depth, weights and output folder.

The model is ``L(bio_detectron.bio_plausible)(model=<detectron2's RetinaNet>, rule=...)``: the
RetinaNet's keys are under ``model.model``, the rule's under ``model`` (``rule``, ``parts``,
``scale``, ``seed``, ``exclude``, ``unsupported``: the arguments of ``bio_plausible``).
"""

from detectron2 import model_zoo
from detectron2.config import LazyCall as L

import bio_detectron
from bio_detectron.data import CheckedDatasetMapper


def _common(name):
    return model_zoo.get_config(f"common/{name}")


model = L(bio_detectron.bio_plausible)(
    model=_common("models/retinanet.py").model,
    rule="backprop",
)
dataloader = _common("data/coco.py").dataloader
optimizer = _common("optim.py").SGD
lr_multiplier = _common("coco_schedule.py").lr_multiplier_1x
train = _common("train.py").train

# --- The model (MODEL.* of Base-BioRetinaNet.yaml) ---
_retinanet = model.model
_resnet = _retinanet.backbone.bottom_up
# The backbone is trained from a classifier of tools/train_imagenet.py (or from scratch), with
# trained BatchNorm and nothing frozen: sign-symmetry from random init with FrozenBN diverges.
# Synchronised across GPUs, as BioTrainer does with MODEL.BIO.SYNC_BN (one process: plain BN;
# several CPU processes: set "BN", SyncBatchNorm needs CUDA there).
_resnet.stem.norm = _resnet.stages.norm = "SyncBN"
_resnet.freeze_at = 0
# ResNet-18: BasicBlocks (no 1x1 conv, so no stride_in_1x1) and 64 channels out of res2, as
# ResNet.make_default_stages builds them for depth < 50; res5 has 512 channels for P6.
# The R-50 leaves set depth 50, stride_in_1x1 False and top_block.in_channels 2048.
_resnet.stages.depth = 18
del _resnet.stages.stride_in_1x1
_retinanet.backbone.top_block.in_channels = 512
# The anchors (2^(i/3) x {32, ..., 512} on P3-P7), IoU thresholds [0.4, 0.5] and labels
# [0, -1, 1] of detectron2's config are those of the yacs base; the box loss is plain L1.
_retinanet.smooth_l1_beta = 0.0
# RGB input normalised as torchvision/tools/train_imagenet.py do, so that the classifier's
# checkpoint sees the input it was trained on.
_retinanet.pixel_mean = [123.675, 116.28, 103.53]
_retinanet.pixel_std = [58.395, 57.12, 57.375]
_retinanet.input_format = "RGB"

# --- Data (DATASETS/INPUT): COCO 2017, shortest side 640-800 in training, 800 in test ---
dataloader.train.mapper.image_format = "RGB"  # the test mapper follows it
dataloader.train.mapper.use_instance_mask = False
# Errors on unreadable images name the file, as BioTrainer's loaders.
dataloader.train.mapper._target_ = dataloader.test.mapper._target_ = CheckedDatasetMapper
# COCO results are written where tools/train_net.py writes them.
dataloader.evaluator.output_dir = "${...train.output_dir}/inference"

# --- Schedule (SOLVER): batch 16, lr 0.01, 90k iterations, x0.1 at 60k and 80k ---
optimizer.lr = 0.01
# Evaluation only at the end, as TEST.EVAL_PERIOD 0.
train.eval_period = 0

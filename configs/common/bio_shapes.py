"""
RetinaNet-R18 from scratch on the embedded shapes dataset (160 px images, 3 classes), the demo's
schedule: the LazyConfig twin of configs/Shapes-Detection/Base-Shapes.yaml (see there and
docs/results.md, "The schedule probes", for why each setting). Leaf files set the rule.
"""

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import CosineParamScheduler

from bio_detectron.solver import weight_decay_for_schedule

from .bio_retinanet import dataloader, model, optimizer, train

# --- The model ---
_retinanet = model.model
_retinanet.num_classes = 3
# A CPU run: BatchNorm per process (SyncBatchNorm needs CUDA in a distributed run).
_retinanet.backbone.bottom_up.stem.norm = _retinanet.backbone.bottom_up.stages.norm = "BN"
# Training from scratch: GroupNorm in FPN and head keeps them stable; 128 channels and 2 convs
# per head tower: about half the cost per iteration.
_retinanet.backbone.norm = "GN"
_retinanet.backbone.out_channels = 128  # P6/P7 follow
_retinanet.head.input_shape = [ShapeSpec(channels=128)] * 5
_retinanet.head.conv_dims = [128, 128]
_retinanet.head.norm = "GN"
# Objects are 16-80 px: anchors of 16-256 px on P3-P7.
_retinanet.anchor_generator.sizes = [
    [x, x * 2 ** (1.0 / 3), x * 2 ** (2.0 / 3)] for x in [16, 32, 64, 128, 256]
]

# --- Data: shapes_train / shapes_val at 160 px ---
dataloader.train.dataset.names = "shapes_train"
dataloader.test.dataset.names = "shapes_val"  # the evaluator follows
dataloader.train.mapper.augmentations[0].short_edge_length = (160,)
dataloader.train.mapper.augmentations[0].max_size = 160
dataloader.test.mapper.augmentations[0].short_edge_length = 160
dataloader.test.mapper.augmentations[0].max_size = 160
dataloader.train.total_batch_size = 8
# In the main process: on 2 cores a loader process takes CPU from training (Base-Shapes.yaml).
dataloader.train.num_workers = dataloader.test.num_workers = 0

# --- Schedule: 800 iterations, lr 0.02 with cosine decay to 0 after 50 warm-up iterations ---
optimizer.lr = 0.02
# Strong weight decay, not on biases (the classifier's prior), for runs of up to 800 iterations;
# a longer train.max_iter scales it by 800 / max_iter (Base-Shapes.yaml, SOLVER.BIO).
optimizer.weight_decay = L(weight_decay_for_schedule)(
    weight_decay=0.05, reference_iter=800, max_iter="${train.max_iter}"
)
optimizer.params.weight_decay_bias = 0.0
train.max_iter = 800
# bfloat16 autocast on a CPU with native bfloat16, float16 on CUDA (Base-Shapes.yaml).
train.amp.enabled = True
# warmup_length is a fraction of the run: 50 iterations of 800. Change it with train.max_iter.
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(CosineParamScheduler)(start_value=1.0, end_value=0.0),
    warmup_length=50 / 800,
    warmup_factor=0.001,
)
# Only the final model is written (model_final.pth); evaluation at the end.
train.checkpointer.period = 100000
train.eval_period = 0
train.device = "cpu"
train.seed = 0
train.init_checkpoint = ""
# Per-layer alignment metrics every 100 iterations (docs/alignment.md).
train.bio_alignment_period = 100

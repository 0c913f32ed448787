"""
RetinaNet ResNet-FPN on Pascal VOC 07+12 (trained on voc_2007_trainval + voc_2012_trainval,
evaluated on voc_2007_test, 20 classes): the LazyConfig twin of
configs/VOC-Detection/Base-VOC.yaml (see there for the schedule and its projected GPU-hours),
made of configs/common/bio_retinanet.py with VOC's data, classes, evaluator and schedule. Leaf files
set the rule, depth, weights and output folder.
"""

from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from bio_detectron.evaluation import build_dataset_evaluator

from .bio_retinanet import dataloader, model, optimizer, train

# --- The model: 20 classes ---
model.model.num_classes = 20

# --- Data (DATASETS/INPUT): 07+12 trainval, shortest side 480-640 in training, 560 in test ---
dataloader.train.dataset.names = ("voc_2007_trainval", "voc_2012_trainval")
dataloader.test.dataset.names = "voc_2007_test"
dataloader.train.mapper.augmentations[0].short_edge_length = (480, 512, 544, 576, 608, 640)
dataloader.train.mapper.augmentations[0].max_size = 1000
dataloader.test.mapper.augmentations[0].short_edge_length = 560
dataloader.test.mapper.augmentations[0].max_size = 1000
# The evaluator of the test set's evaluator_type, as train_net.py chooses it: VOC's AP50 per class.
dataloader.evaluator = L(build_dataset_evaluator)(
    dataset_name="${..test.dataset.names}",
    output_dir="${...train.output_dir}/inference",
)

# --- Schedule (SOLVER): batch 16, lr 0.01, 12000 iterations, x0.1 at 8000 and 10500 ---
# (The scheduler sees the fraction of train.max_iter done: another max_iter keeps the fractions.)
optimizer.lr = 0.01
train.max_iter = 12000
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01], milestones=[8000, 10500], num_updates=12000
    ),
    # SOLVER.WARMUP_ITERS 1000 of detectron2's yacs defaults, as a fraction of the run.
    warmup_length=1000 / 12000,
    warmup_factor=0.001,
)
train.checkpointer.period = 2000
train.eval_period = 0

"""A smoke run of the shapes config: 4 iterations of 2 images of shapes_train_mini (96 px),
evaluated on shapes_val_mini; the twin of retinanet_R_18_FPN_sign_symmetry_instant_test.yaml."""

from detectron2.config import LazyCall as L
from fvcore.common.param_scheduler import MultiStepParamScheduler

from ..common.bio_shapes import dataloader, model, optimizer, train

model.rule = "sign_symmetry"
model.scale = "mean_abs"
model.model.max_detections_per_image = 20

dataloader.train.dataset.names = "shapes_train_mini"
dataloader.test.dataset.names = "shapes_val_mini"
dataloader.train.mapper.augmentations[0].short_edge_length = (96,)
dataloader.train.mapper.augmentations[0].max_size = 96
dataloader.test.mapper.augmentations[0].short_edge_length = 96
dataloader.test.mapper.augmentations[0].max_size = 96
dataloader.train.total_batch_size = 2
dataloader.train.num_workers = dataloader.test.num_workers = 0

# A constant lr: a cosine decay over 4 iterations leaves too little to detect anything.
lr_multiplier = L(MultiStepParamScheduler)(
    values=[1.0], milestones=[], num_updates="${train.max_iter}"
)
train.max_iter = 4
# float32: 4 bfloat16 iterations leave too little to detect (the yacs twin says so too).
train.amp.enabled = False
train.checkpointer.period = 2
# Alignment metrics every 2 iterations, written every 2.
train.bio_alignment_period = 2
train.log_period = 2
train.output_dir = "output/quick_schedules/retinanet_R_18_FPN_sign_symmetry_instant_test"

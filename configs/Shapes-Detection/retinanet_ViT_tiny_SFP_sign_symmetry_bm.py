from ..common.bio_vitdet import batch_manhattan_optimizer as optimizer
from ..common.bio_vitdet import dataloader, lr_multiplier, model, train

model.rule = "sign_symmetry"
model.scale = "mean_abs"
# Batch-manhattan SGD, the last layer on plain SGD (configs/common/bio_vitdet.py).
train.output_dir = "output/shapes/retinanet_ViT_tiny_SFP_sign_symmetry_bm"

from detectron2.config import LazyCall as L

from bio_detectron.core.optim import BatchManhattanSGD
from bio_detectron.solver import bio_param_groups

from ..common.bio_vitdet import dataloader, lr_multiplier, model, train

model.rule = "sign_symmetry"
model.scale = "mean_abs"
# Batch-manhattan SGD for every parameter but the last layer's (cls_score, bbox_pred), which
# keeps plain SGD at the base's lr 0.02, as retinanet_R_18_FPN_sign_symmetry_bm.yaml: the same
# weight decay (not on norms and biases) and momentum as the base's SGD.
optimizer = L(BatchManhattanSGD)(
    params=L(bio_param_groups)(
        base_lr="${..lr}", weight_decay_norm=0.0, weight_decay_bias=0.0, last_layer_lr=0.02
    ),
    lr=0.0003,
    momentum=0.9,
    weight_decay=0.05,
)
train.output_dir = "output/shapes/retinanet_ViT_tiny_SFP_sign_symmetry_bm"

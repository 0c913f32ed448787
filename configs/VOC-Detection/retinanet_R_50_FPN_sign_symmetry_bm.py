"""The LazyConfig twin of configs/VOC-Detection/retinanet_R_50_FPN_sign_symmetry_bm.yaml."""

from detectron2.config import LazyCall as L

from bio_detectron.core.optim import BatchManhattanSGD
from bio_detectron.solver import bio_param_groups

from ..common.bio_voc import dataloader, lr_multiplier, model, train

# ResNet-50: bottleneck blocks with the stride in the 3x3 conv (as tools/train_imagenet.py's
# ResNets and torchvision's), 256 channels out of res2 and 2048 out of res5 (for P6).
model.model.backbone.bottom_up.stages.depth = 50
model.model.backbone.bottom_up.stages.stride_in_1x1 = False
model.model.backbone.top_block.in_channels = 2048
model.rule = "sign_symmetry"
# The head convs start at std 0.01, far below the kaiming scale: B = sign(W)*mean|W| keeps
# the feedback the size of W (docs/rules.md, "The learning rules and their keys").
model.scale = "mean_abs"
# Batch-manhattan SGD for every parameter but the last layer's (cls_score, bbox_pred), which
# keeps plain SGD at lr 0.01: the yaml's SOLVER.BIO (see there for the sign step).
optimizer = L(BatchManhattanSGD)(
    params=L(bio_param_groups)(base_lr="${..lr}", weight_decay_norm=0.0, last_layer_lr=0.01),
    lr=0.0001,
    momentum=0.9,
    weight_decay=1e-4,
)
# A classifier trained with the same rule: configs/ImageNet/resnet50_sign_symmetry.yaml
train.init_checkpoint = "output/imagenet/resnet50_sign_symmetry/model_final.pth"
train.output_dir = "output/voc/retinanet_R_50_FPN_sign_symmetry_bm"

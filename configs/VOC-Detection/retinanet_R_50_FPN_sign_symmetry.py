"""The LazyConfig twin of configs/VOC-Detection/retinanet_R_50_FPN_sign_symmetry.yaml."""

from ..common.bio_voc import dataloader, lr_multiplier, model, optimizer, train

# ResNet-50: bottleneck blocks with the stride in the 3x3 conv (as tools/train_imagenet.py's
# ResNets and torchvision's), 256 channels out of res2 and 2048 out of res5 (for P6).
model.model.backbone.bottom_up.stages.depth = 50
model.model.backbone.bottom_up.stages.stride_in_1x1 = False
model.model.backbone.top_block.in_channels = 2048
model.rule = "sign_symmetry"
# The head convs start at std 0.01, far below the kaiming scale: B = sign(W)*mean|W| keeps
# the feedback the size of W (docs/rules.md, "The learning rules and their keys").
model.scale = "mean_abs"
# A classifier trained with the same rule: configs/ImageNet/resnet50_sign_symmetry.yaml
train.init_checkpoint = "output/imagenet/resnet50_sign_symmetry/model_final.pth"
train.output_dir = "output/voc/retinanet_R_50_FPN_sign_symmetry"

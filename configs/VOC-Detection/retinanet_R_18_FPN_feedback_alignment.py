"""The LazyConfig twin of configs/VOC-Detection/retinanet_R_18_FPN_feedback_alignment.yaml."""

from ..common.bio_voc import dataloader, lr_multiplier, model, optimizer, train

model.rule = "feedback_alignment"
# The head convs start at std 0.01, far below the kaiming scale: B = sign(W)*mean|W| keeps
# the feedback the size of W (docs/rules.md, "The learning rules and their keys").
model.scale = "mean_abs"
# A classifier trained with the same rule: configs/ImageNet/resnet18_feedback_alignment.yaml
train.init_checkpoint = "output/imagenet/resnet18_feedback_alignment/model_final.pth"
train.output_dir = "output/voc/retinanet_R_18_FPN_feedback_alignment"

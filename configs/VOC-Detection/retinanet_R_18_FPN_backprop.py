"""The LazyConfig twin of configs/VOC-Detection/retinanet_R_18_FPN_backprop.yaml."""

from ..common.bio_voc import dataloader, lr_multiplier, model, optimizer, train

model.rule = "backprop"
# A classifier trained with the same rule: configs/ImageNet/resnet18_backprop.yaml
train.init_checkpoint = "output/imagenet/resnet18_backprop/model_final.pth"
train.output_dir = "output/voc/retinanet_R_18_FPN_backprop"

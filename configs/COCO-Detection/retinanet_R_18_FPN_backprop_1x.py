from ..common.bio_retinanet import dataloader, lr_multiplier, model, optimizer, train

model.rule = "backprop"
# A classifier trained with the same rule: configs/ImageNet/resnet18_backprop.yaml
train.init_checkpoint = "output/imagenet/resnet18_backprop/model_final.pth"
train.output_dir = "output/coco/retinanet_R_18_FPN_backprop_1x"

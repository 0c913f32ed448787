"""The LazyConfig twin of configs/VOC-Detection/retinanet_R_18_FPN_kolen_pollack.yaml."""

from ..common.bio_voc import dataloader, lr_multiplier, model, optimizer, train

model.rule = "kolen_pollack"
# B of the head starts small, N(0, 0.005^2), as in the Shapes, Textures and ImageNet configs:
# B is then mostly the updates it shares with W (the backbone's B comes from the checkpoint).
model.scale = 0.005
# A classifier trained with the same rule: configs/ImageNet/resnet18_kolen_pollack.yaml
train.init_checkpoint = "output/imagenet/resnet18_kolen_pollack/model_final.pth"
train.output_dir = "output/voc/retinanet_R_18_FPN_kolen_pollack"

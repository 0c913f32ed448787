"""The LazyConfig twin of configs/VOC-Detection/retinanet_R_50_FPN_kolen_pollack.yaml."""

from ..common.bio_voc import dataloader, lr_multiplier, model, optimizer, train

# ResNet-50: bottleneck blocks with the stride in the 3x3 conv (as tools/train_imagenet.py's
# ResNets and torchvision's), 256 channels out of res2 and 2048 out of res5 (for P6).
model.model.backbone.bottom_up.stages.depth = 50
model.model.backbone.bottom_up.stages.stride_in_1x1 = False
model.model.backbone.top_block.in_channels = 2048
model.rule = "kolen_pollack"
# B of the head starts small, N(0, 0.005^2), as in the Shapes, Textures and ImageNet configs:
# B is then mostly the updates it shares with W (the backbone's B comes from the checkpoint).
model.scale = 0.005
# A classifier trained with the same rule: configs/ImageNet/resnet50_kolen_pollack.yaml
train.init_checkpoint = "output/imagenet/resnet50_kolen_pollack/model_final.pth"
train.output_dir = "output/voc/retinanet_R_50_FPN_kolen_pollack"

from ..common.bio_retinanet import dataloader, lr_multiplier, model, optimizer, train

model.rule = "sign_symmetry"
# The head convs start at std 0.01, far below the kaiming scale: B = sign(W)*mean|W| keeps
# the feedback the size of W (docs/rules.md, "The learning rules and their keys").
model.scale = "mean_abs"
# A classifier trained with the same rule: configs/ImageNet/resnet18_sign_symmetry.yaml
train.init_checkpoint = "output/imagenet/resnet18_sign_symmetry/model_final.pth"
train.output_dir = "output/coco/retinanet_R_18_FPN_sign_symmetry_1x"

from ..common.bio_shapes import dataloader, lr_multiplier, model, optimizer, train

model.rule = "sign_symmetry"
model.scale = "mean_abs"
train.output_dir = "output/shapes/retinanet_R_18_FPN_sign_symmetry"

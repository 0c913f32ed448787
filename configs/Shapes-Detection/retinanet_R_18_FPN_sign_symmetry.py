from ..common.bio_shapes import dataloader, lr_multiplier, model, optimizer, train

model.rule = "sign_symmetry"
model.scale = "mean_abs"
# The prediction layers keep exact backprop, as in the yacs config (see there for why).
model.parts = {"predictor": "backprop"}
train.output_dir = "output/shapes/retinanet_R_18_FPN_sign_symmetry"

from ..common.bio_vitdet import dataloader, lr_multiplier, model, optimizer, train

model.rule = "sign_symmetry"
model.scale = "mean_abs"
# The prediction layers keep exact backprop, as in the R18 configs (see
# retinanet_R_18_FPN_sign_symmetry.yaml for why).
model.parts = {"predictor": "backprop"}
train.output_dir = "output/shapes/retinanet_ViT_tiny_SFP_sign_symmetry"

from ..common.bio_shapes import dataloader, lr_multiplier, model, optimizer, train

model.rule = "backprop"
train.output_dir = "output/shapes/retinanet_R_18_FPN_backprop"

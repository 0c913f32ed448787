from ..common.bio_vitdet import dataloader, lr_multiplier, model, optimizer, train

model.rule = "backprop"
train.output_dir = "output/shapes/retinanet_ViT_tiny_SFP_backprop"

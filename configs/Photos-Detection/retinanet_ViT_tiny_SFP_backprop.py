from ..common.bio_vitdet_photos import dataloader, lr_multiplier, model, optimizer, train

model.rule = "backprop"
train.output_dir = "output/photos/retinanet_ViT_tiny_SFP_backprop"

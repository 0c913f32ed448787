from ..common.bio_vitdet import dataloader, lr_multiplier, model, optimizer, train

model.rule = "feedback_alignment"
model.scale = "mean_abs"
train.output_dir = "output/shapes/retinanet_ViT_tiny_SFP_feedback_alignment"

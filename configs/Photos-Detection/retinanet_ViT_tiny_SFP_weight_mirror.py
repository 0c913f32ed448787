from ..common.bio_vitdet_photos import dataloader, lr_multiplier, model, optimizer, train

model.rule = "weight_mirror"
model.scale = "mean_abs"
# The mirror of the R18 configs (retinanet_R_18_FPN_weight_mirror.yaml says why): 20 steps after
# the first iteration, then one every 5, each with 8x the library's noise samples, and DECAY 0.5.
train.bio_mirror = dict(period=5, decay=0.5, lr=0.5, samples_per_input=2.0)
train.output_dir = "output/photos/retinanet_ViT_tiny_SFP_weight_mirror"

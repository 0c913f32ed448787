from ..common.bio_vitdet_photos import dataloader, lr_multiplier, model, optimizer, train

model.rule = "kolen_pollack"
# B starts small, N(0, 0.005^2), so that it is mostly the updates it shares with W, as in the R18
# configs (retinanet_R_18_FPN_kolen_pollack.yaml says why).
model.scale = 0.005
train.output_dir = "output/photos/retinanet_ViT_tiny_SFP_kolen_pollack"

from ..common.bio_vitdet import dataloader, lr_multiplier, model, optimizer, train

# Direct feedback alignment in every part: each layer's input gradient is B_l times the error of
# RetinaNet's outputs (the output gradients of head.cls_score and head.bbox_pred, the predictor
# part, as in retinanet_R_18_FPN_direct_feedback_alignment.yaml), brought to the layer input's
# resolution with its sum over positions kept; scale kaiming, B_l ~ N(0, 1/C_e). The convolutions
# (patch embedding, pyramid, head) get the error maps brought to their input's resolution, and so
# do the ViT's linear layers (qkv, proj, fc1, fc2), whose inputs are tokens (N, H, W, C): the maps
# brought to their token grid (docs/rules.md, direct feedback alignment). lr 0.002, a tenth of the
# other rules', as the R18 config of this rule (which says why).
model.rule = "direct_feedback_alignment"
optimizer.lr = 0.002
train.output_dir = "output/shapes/retinanet_ViT_tiny_SFP_direct_feedback_alignment"

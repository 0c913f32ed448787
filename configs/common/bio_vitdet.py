"""
A ViTDet-style RetinaNet from scratch on the embedded shapes dataset (160 px images, 3 classes),
every layer learning with ``model.rule``: detectron2's own plain ViT backbone and
SimpleFeaturePyramid (those of its ``common/models/mask_rcnn_vitdet.py``), shrunk to a tiny ViT,
under the RetinaNet head, data and schedule of the R18 shapes configs
(configs/common/bio_shapes.py). Leaf files set the rule.

Every projection of the ViT (the patch embedding, each block's qkv and proj, its MLP's fc1 and
fc2) is an ``nn.Conv2d`` or ``nn.Linear`` and learns with the rule, as do the pyramid's
transposed and plain convolutions and the head; the products of activations inside attention
(QKᵀ, attention·V) carry no weight and stay exact. ``bio_detectron.rules_of(model)`` lists each.
"""

from functools import partial

from detectron2.config import LazyCall as L
from detectron2.modeling import SimpleFeaturePyramid, ViT
from detectron2.modeling.backbone.fpn import LastLevelP6P7
from torch import nn

from bio_detectron.core.optim import BatchManhattanSGD
from bio_detectron.solver import bio_param_groups

from .bio_shapes import dataloader, lr_multiplier, model, optimizer, train

# The ViT recipe was measured with a weight decay of 0.05 at every length (docs/results.md, "A
# ViTDet-style detector"), not with the R18 configs' decay that follows train.max_iter.
optimizer.weight_decay = 0.05

# --- The backbone: a ViT-Tiny-like plain ViT (ViT-Ti's width and heads, half its depth) ---
# 160 px images at patch 16: one 10x10 map of tokens, stride 16. The simple feature pyramid makes
# P3-P5 of it (x2 by a transposed convolution, x1, x0.5 by max pooling) and P6/P7 of P5, the
# levels, channels and anchors of the R18 configs' FPN, so the RetinaNet head is theirs unchanged.
model.model.backbone = L(SimpleFeaturePyramid)(
    net=L(ViT)(
        img_size=160,
        patch_size=16,
        embed_dim=192,
        depth=6,
        num_heads=3,
        mlp_ratio=4,
        qkv_bias=True,
        # A short run of a small model from scratch: no stochastic depth.
        drop_path_rate=0.0,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        # Every block attends globally: ViTDet windows the attention of most blocks to afford
        # its 64x64 tokens; 100 tokens need no windows. (Direct feedback alignment also needs
        # the batch first at every layer, which windowed blocks' projections do not see: they
        # take the windows as their batch.)
        window_size=0,
        window_block_indexes=[],
        residual_block_indexes=[],
        use_rel_pos=True,
        # The absolute position embedding made for this map (no class token), so that it is not
        # interpolated from a pretraining size in every forward pass: no pretrained weights.
        pretrain_img_size=160,
        pretrain_use_cls_token=False,
        out_feature="last_feat",
    ),
    in_feature="${.net.out_feature}",
    out_channels=128,
    scale_factors=(2.0, 1.0, 0.5),
    top_block=L(LastLevelP6P7)(in_channels=128, out_channels=128, in_feature="p5"),
    norm="LN",
    square_pad=0,
)


# Batch-manhattan SGD for every parameter but the last layer's (cls_score, bbox_pred), which keeps
# plain SGD at the base's lr 0.02, as retinanet_R_18_FPN_sign_symmetry_bm.yaml: the same weight
# decay (not on norms and biases) and momentum as the base's SGD. The sign_symmetry_bm leaves
# take it as their optimizer.
batch_manhattan_optimizer = L(BatchManhattanSGD)(
    params=L(bio_param_groups)(
        base_lr="${..lr}", weight_decay_norm=0.0, weight_decay_bias=0.0, last_layer_lr=0.02
    ),
    lr=0.0003,
    momentum=0.9,
    weight_decay=0.05,
)

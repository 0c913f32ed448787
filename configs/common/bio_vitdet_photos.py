"""
The ViTDet-style RetinaNet of configs/common/bio_vitdet.py on the embedded photos dataset (10
classes of objects cut from real photographs, on real photographs, 128 px; see
bio_detectron/data/photos.py): only the dataset keys, the ViT's image size and the schedule
length differ, as the R18 Photos-Detection configs differ from the Shapes-Detection ones. Leaf
files set the rule.
"""

from .bio_vitdet import (
    batch_manhattan_optimizer,
    dataloader,
    lr_multiplier,
    model,
    optimizer,
    train,
)

# --- The model: 10 classes; 128 px at patch 16 is an 8x8 map of tokens ---
model.model.num_classes = 10
_vit = model.model.backbone.net
_vit.img_size = _vit.pretrain_img_size = 128

# --- Data: photos_train / photos_val at 128 px ---
dataloader.train.dataset.names = "photos_train"
dataloader.test.dataset.names = "photos_val"
dataloader.train.mapper.augmentations[0].short_edge_length = (128,)
dataloader.train.mapper.augmentations[0].max_size = 128
dataloader.test.mapper.augmentations[0].short_edge_length = 128
dataloader.test.mapper.augmentations[0].max_size = 128

# --- Schedule: 3200 iterations, the same 50 warm-up iterations (a fraction of the run) ---
train.max_iter = 3200
lr_multiplier.warmup_length = 50 / 3200

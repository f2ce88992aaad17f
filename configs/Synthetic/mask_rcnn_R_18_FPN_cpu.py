"""The small CPU model on the synthetic set: configs/Synthetic/mask_rcnn_R_18_FPN_cpu.yaml as a
LazyConfig (``train_net.py --config-file`` takes either; overrides here are ``key=value``):

    python train_net.py --config-file configs/Synthetic/mask_rcnn_R_18_FPN_cpu.py optimizer.lr=0.02

As in Detectron2's LazyConfigs, the schedule's milestones are iterations and its warm-up a
fraction of train.max_iter: change them with it.
"""

from detectron2.config import LazyCall as L
from detectron2.modeling.backbone import ResNet

from ..common.data import dataloader
from ..common.mask_rcnn_ext_fpn import model
from ..common.train import lr_multiplier, optimizer, train

# (Every top-level name that holds a config becomes a key of this config: no aliases below.)

# R-18 with group norm, from scratch (frozen batch norm would overflow with random weights).
model.backbone.bottom_up.stem.norm = "GN"
model.backbone.bottom_up.stages = L(ResNet.make_default_stages)(depth=18, norm="GN")
model.backbone.bottom_up.freeze_at = 0
model.backbone.norm = "GN"
model.backbone.out_channels = 128
model.proposal_generator.post_nms_topk = (500, 300)
model.roi_heads.num_classes = 4
model.roi_heads.batch_size_per_image = 64
model.roi_heads.box_head.fc_dims = [512, 512]
model.roi_heads.box_head.conv_norm = "GN"
model.roi_heads.box_predictor.input_shape.channels = 512
model.roi_heads.mask_head.conv_dims = [128] * 5
model.roi_heads.mask_head.conv_norm = "GN"

dataloader.train.dataset.names = "synthetic_train"
dataloader.train.mapper.augmentations[0].short_edge_length = (256,)
dataloader.train.mapper.augmentations[0].max_size = 320
dataloader.train.total_batch_size = 4
dataloader.train.num_workers = 1
dataloader.test.dataset.names = "synthetic_val"
dataloader.test.mapper.augmentations[0].short_edge_length = 256
dataloader.test.mapper.augmentations[0].max_size = 320
dataloader.test.num_workers = 1

# 400 iterations: about 9 minutes on 2 CPU cores, as the YAML config.
train.device = "cpu"
train.max_iter = 400
train.checkpointer.period = 200
optimizer.lr = 0.04
lr_multiplier.scheduler.milestones = [340, 380]
lr_multiplier.warmup_length = 50 / 400

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]

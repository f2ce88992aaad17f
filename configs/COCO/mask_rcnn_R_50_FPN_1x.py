"""R-50-FPN, 1x schedule, with mask_rcnn_ext's heads: configs/COCO/mask_rcnn_R_50_FPN_1x.yaml as a
LazyConfig (``train_net.py --config-file`` takes either; overrides here are ``key=value``)."""

from ..common.data import dataloader
from ..common.mask_rcnn_ext_fpn import model
from ..common.train import lr_multiplier, optimizer, train

train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]

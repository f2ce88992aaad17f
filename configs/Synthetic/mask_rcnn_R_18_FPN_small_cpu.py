"""The set-up that `make demo` and the accuracy study train, as a LazyConfig: the twin of
configs/Synthetic/mask_rcnn_R_18_FPN_small_cpu.yaml (same model, optimizer, schedule and data;
tests/test_lazy_config.py checks it), on the 128 x 160 synthetic set (synthetic_small):

    python train_net.py --config-file configs/Synthetic/mask_rcnn_R_18_FPN_small_cpu.py

It starts from the ResNet-18 pretrained on that set's object crops, which `make demo` writes
(`python -m mask_rcnn_ext.pretrain` reads the PRETRAIN keys of the YAML twin, which only YAML
configs have); `train.init_checkpoint=""` trains from scratch instead.
"""

from .mask_rcnn_R_18_FPN_cpu import dataloader, lr_multiplier, model, optimizer, train

# The R-18 FPN model of mask_rcnn_R_18_FPN_cpu.py, narrower.
model.backbone.bottom_up.freeze_at = 2  # stem and res2 stay pretrained
model.backbone.out_channels = 64
model.proposal_generator.anchor_generator.sizes = [[16], [32], [64], [128], [256]]
model.proposal_generator.pre_nms_topk = (500, 1000)
model.roi_heads.box_head.fc_dims = [256, 256]
model.roi_heads.box_predictor.input_shape.channels = 256
model.roi_heads.mask_head.conv_dims = [64] * 5

dataloader.train.dataset.names = "synthetic_small_train"
dataloader.train.mapper.augmentations[0].short_edge_length = (128,)
dataloader.train.mapper.augmentations[0].max_size = 160
dataloader.test.dataset.names = "synthetic_small_val"
dataloader.test.mapper.augmentations[0].short_edge_length = 128
dataloader.test.mapper.augmentations[0].max_size = 160

# 860 iterations, evaluated at 80% and at the end (the YAML twin says why).
train.init_checkpoint = "output/pretrained/R_18_synthetic_small.pth"
train.max_iter = 860
train.checkpointer.period = 860
train.eval_period = 688
lr_multiplier.scheduler.milestones = [568, 668]
lr_multiplier.warmup_length = 50 / 860

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]

"""LazyConfig: Mask R-CNN R-50-FPN with mask_rcnn_ext's ROI heads, the model of
``configs/Base-MaskRCNN-Ext-FPN.yaml`` built by ``LazyCall`` (tests/test_lazy_config.py checks
that both build the same model). Values are Detectron2 v0.6's defaults and Base-RCNN-FPN.yaml.

Each part is an argument to change, for example::

    model.roi_heads.num_classes = 4                  # the heads follow
    model.backbone.out_channels = 128                # the RPN head and the pooled features follow
    model.roi_heads.mask_pooler.pooler_type = "PreciseROIPool"

and ``with_mask_scoring(model)`` gives the mask head the MaskIoU branch (Mask Scoring R-CNN).
"""

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling import GeneralizedRCNN
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.backbone import FPN, BasicStem, ResNet
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.proposal_generator import RPN, StandardRPNHead
from detectron2.modeling.roi_heads import FastRCNNConvFCHead, FastRCNNOutputLayers

from mask_rcnn_ext.modeling import (
    MaskIoUHead,
    MaskRCNNExtROIHeads,
    MaskRCNNFCNHead,
    MaskScoringHead,
    ROIPooler,
)

POOLED_LEVELS = ["p2", "p3", "p4", "p5"]
POOLED_SCALES = (1 / 4, 1 / 8, 1 / 16, 1 / 32)

model = L(GeneralizedRCNN)(
    backbone=L(FPN)(
        bottom_up=L(ResNet)(
            stem=L(BasicStem)(in_channels=3, out_channels=64, norm="FrozenBN"),
            stages=L(ResNet.make_default_stages)(depth=50, stride_in_1x1=True, norm="FrozenBN"),
            out_features=["res2", "res3", "res4", "res5"],
            freeze_at=2,
        ),
        in_features=["res2", "res3", "res4", "res5"],
        out_channels=256,
        top_block=L(LastLevelMaxPool)(),
    ),
    proposal_generator=L(RPN)(
        in_features=["p2", "p3", "p4", "p5", "p6"],
        head=L(StandardRPNHead)(in_channels="${...backbone.out_channels}", num_anchors=3),
        anchor_generator=L(DefaultAnchorGenerator)(
            sizes=[[32], [64], [128], [256], [512]],  # one size per level
            aspect_ratios=[0.5, 1.0, 2.0],
            strides=[4, 8, 16, 32, 64],
            offset=0.0,
        ),
        anchor_matcher=L(Matcher)(thresholds=[0.3, 0.7], labels=[0, -1, 1],
                                  allow_low_quality_matches=True),
        box2box_transform=L(Box2BoxTransform)(weights=[1.0, 1.0, 1.0, 1.0]),
        batch_size_per_image=256,
        positive_fraction=0.5,
        pre_nms_topk=(2000, 1000),  # (training, test), per level
        post_nms_topk=(1000, 1000),
        nms_thresh=0.7,
    ),
    roi_heads=L(MaskRCNNExtROIHeads)(
        num_classes=80,
        batch_size_per_image=512,
        positive_fraction=0.25,
        proposal_matcher=L(Matcher)(thresholds=[0.5], labels=[0, 1],
                                    allow_low_quality_matches=False),
        box_in_features=POOLED_LEVELS,
        # backend: which implementation pools (MODEL.ROI_POOLER_BACKEND in YAML): "auto", or
        # e.g. "separable"; the mask pooler follows the box pooler's.
        box_pooler=L(ROIPooler)(output_size=7, scales=POOLED_SCALES, sampling_ratio=0,
                                pooler_type="ROIAlignV2", backend="auto"),
        box_head=L(FastRCNNConvFCHead)(
            input_shape=L(ShapeSpec)(channels="${....backbone.out_channels}", height=7, width=7),
            conv_dims=[],
            fc_dims=[1024, 1024],
        ),
        box_predictor=L(FastRCNNOutputLayers)(
            input_shape=L(ShapeSpec)(channels=1024),  # the box head's last fc
            box2box_transform=L(Box2BoxTransform)(weights=(10, 10, 5, 5)),
            num_classes="${..num_classes}",
            test_score_thresh=0.05,
            test_nms_thresh=0.5,
            test_topk_per_image=100,
        ),
        mask_in_features=POOLED_LEVELS,
        mask_pooler=L(ROIPooler)(output_size=14, scales=POOLED_SCALES, sampling_ratio=0,
                                 pooler_type="ROIAlignV2", backend="${..box_pooler.backend}"),
        mask_head=L(MaskRCNNFCNHead)(
            input_shape=L(ShapeSpec)(channels="${....backbone.out_channels}", height=14,
                                     width=14),
            out_channels="${..num_classes}",  # + 1 with loss="softmax"; 1 if class-agnostic
            conv_dims=[256, 256, 256, 256, 256],  # 4 convolutions, then the deconvolution
            output_side=28,
        ),
    ),
    pixel_mean=[103.530, 116.280, 123.675],
    pixel_std=[1.0, 1.0, 1.0],
    input_format="BGR",
)


def with_mask_scoring(model, conv_dim: int = 256, fc_dim: int = 1024) -> None:
    """Make ``model``'s mask head a :class:`MaskScoringHead` (in place): its MaskIoU branch has 4
    convolutions of ``conv_dim`` channels and 2 fc layers of ``fc_dim`` (the paper's)."""
    head = model.roi_heads.mask_head
    head._target_ = MaskScoringHead
    head.mask_iou_head = L(MaskIoUHead)(
        in_channels="${..input_shape.channels}",
        pooled_side="${..input_shape.height}",
        mask_side="${..output_side}",
        num_classes="${...num_classes}",
        num_conv=4, conv_dim=conv_dim, num_fc=2, fc_dim=fc_dim,
    )

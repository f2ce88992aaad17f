"""Stock Detectron2 Mask R-CNN (R50-FPN) trains, checkpoints, resumes and predicts on CPU with the
Detectron2 in use: the whole stack, data loader to evaluator, on today's packages."""

import numpy as np
import torch
from detectron2.config import get_cfg
from detectron2.engine import DefaultPredictor, DefaultTrainer
from PIL import Image


def _mask_rcnn_cfg(dataset_name, output_dir):
    cfg = get_cfg()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.MASK_ON = True
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    # Random weights with frozen batch norm overflow; group norm keeps activations finite.
    cfg.MODEL.RESNETS.NORM = "GN"
    cfg.MODEL.FPN.NORM = "GN"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[32], [64], [128], [256], [512]]
    cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[0.5, 1.0, 2.0]]
    cfg.MODEL.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 200
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 100
    cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 2
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 64
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 2
    cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 7
    cfg.MODEL.ROI_MASK_HEAD.NAME = "MaskRCNNConvUpsampleHead"
    cfg.MODEL.ROI_MASK_HEAD.NUM_CONV = 4
    cfg.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION = 14
    cfg.DATASETS.TRAIN = (dataset_name,)
    cfg.DATASETS.TEST = ()
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.INPUT.MIN_SIZE_TRAIN = (64,)
    cfg.INPUT.MAX_SIZE_TRAIN = 96
    cfg.INPUT.MIN_SIZE_TEST = 64
    cfg.INPUT.MAX_SIZE_TEST = 96
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.SOLVER.BASE_LR = 0.001
    cfg.SOLVER.MAX_ITER = 2
    cfg.SOLVER.CHECKPOINT_PERIOD = 1
    cfg.SOLVER.WARMUP_ITERS = 0
    cfg.OUTPUT_DIR = str(output_dir)
    return cfg


def test_stock_mask_rcnn_trains_resumes_and_predicts(tiny_coco_dataset, tmp_path):
    torch.manual_seed(0)
    cfg = _mask_rcnn_cfg(tiny_coco_dataset, tmp_path / "output")
    trainer = DefaultTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    losses = trainer.storage.history("total_loss").values()
    assert len(losses) == 2 and all(np.isfinite(value) for value, _ in losses)
    assert {"loss_mask", "loss_cls", "loss_box_reg", "loss_rpn_cls"} <= set(
        trainer.storage.histories())

    # Resuming reads the last checkpoint (under torch.load's weights_only default) and its
    # iteration counter.
    cfg.defrost()
    cfg.SOLVER.MAX_ITER = 3
    resumed = DefaultTrainer(cfg)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 2
    for name, value in resumed.model.state_dict().items():
        torch.testing.assert_close(value, trainer.model.state_dict()[name])

    cfg.MODEL.WEIGHTS = str(tmp_path / "output" / "model_final.pth")
    predictor = DefaultPredictor(cfg)
    image = np.asarray(Image.open(tmp_path / "001.png").convert("RGB"))[:, :, ::-1]
    instances = predictor(image)["instances"]
    assert instances.image_size == image.shape[:2]
    assert len(instances) > 0
    assert instances.pred_masks.shape[1:] == image.shape[:2]

"""Stock Detectron2 Mask R-CNN (R50-FPN) trains, checkpoints, resumes and predicts on CPU with the
Detectron2 in use: the whole stack, data loader to evaluator, on today's packages."""

import numpy as np
import torch
from detectron2.engine import DefaultPredictor, DefaultTrainer
from PIL import Image

from helpers import small_mask_rcnn_cfg


def test_stock_mask_rcnn_trains_resumes_and_predicts(tiny_coco_dataset, tmp_path):
    torch.manual_seed(0)
    cfg = small_mask_rcnn_cfg(tiny_coco_dataset, tmp_path / "output")
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
    image = np.asarray(Image.open(tmp_path / "train" / "000000.png").convert("RGB"))[:, :, ::-1]
    instances = predictor(image)["instances"]
    assert instances.image_size == image.shape[:2]
    assert len(instances) > 0
    assert instances.pred_masks.shape[1:] == image.shape[:2]

"""Training and evaluation on Detectron2's engine."""

from __future__ import annotations

import os

from detectron2.engine import DefaultTrainer
from detectron2.evaluation import COCOEvaluator

__all__ = ["Trainer"]


class Trainer(DefaultTrainer):
    """Detectron2's DefaultTrainer, evaluating instance segmentation with COCOEvaluator (bbox and
    segm AP) into ``OUTPUT_DIR/inference``."""

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
        return COCOEvaluator(dataset_name, output_dir=output_folder)

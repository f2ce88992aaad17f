#!/usr/bin/env python
"""Run a trained model on images and write visualisations (Detectron2's DefaultPredictor, with
safe weight loading, and Visualizer).

    python demo.py --config-file configs/Synthetic/mask_rcnn_R_18_FPN_cpu.yaml \\
        --input datasets/synthetic/val/000000.png --output output/vis \\
        MODEL.WEIGHTS output/demo/model_final.pth
"""

import argparse
from pathlib import Path

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.visualizer import Visualizer
from PIL import Image

from mask_rcnn_ext import load_config
from mask_rcnn_ext.data.images import read_image
from mask_rcnn_ext.engine import Predictor


def setup(args):
    cfg = load_config(args.config_file, args.opts)
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = args.confidence_threshold
    cfg.freeze()
    return cfg


def metadata_for(cfg):
    """The test set's metadata; loading a registered set fills in its class names."""
    if not cfg.DATASETS.TEST:
        return MetadataCatalog.get("__unnamed")
    name = cfg.DATASETS.TEST[0]
    if name in DatasetCatalog.list():
        DatasetCatalog.get(name)
    return MetadataCatalog.get(name)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--input", nargs="+", required=True, help="image files")
    parser.add_argument("--output", required=True, type=Path, help="folder for the PNGs")
    parser.add_argument("--confidence-threshold", type=float, default=0.5)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config KEY VALUE pairs")
    args = parser.parse_args(argv)
    cfg = setup(args)
    predictor = Predictor(cfg)
    metadata = metadata_for(cfg)
    args.output.mkdir(parents=True, exist_ok=True)
    for path in args.input:
        image = read_image(path, "BGR")
        instances = predictor(image)["instances"].to("cpu")
        drawn = Visualizer(image[:, :, ::-1], metadata).draw_instance_predictions(instances)
        target = args.output / (Path(path).stem + ".png")
        Image.fromarray(drawn.get_image()).save(target)
        print(f"{path}: {len(instances)} instances -> {target}")


if __name__ == "__main__":
    main()

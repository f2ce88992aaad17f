#!/usr/bin/env python
"""Run a trained model on images and write visualisations (Detectron2's DefaultPredictor, with
safe weight loading, and Visualizer).

    python demo.py --config-file configs/Synthetic/mask_rcnn_R_18_FPN_cpu.yaml \\
        --input datasets/synthetic/val/000000.png --output output/vis \\
        MODEL.WEIGHTS output/demo/model_final.pth
    python demo.py --config-file CFG --dataset synthetic_val --num-images 8 --show-gt \\
        --output output/vis MODEL.WEIGHTS output/demo/model_final.pth   # ground truth | predictions
"""

import argparse
from itertools import islice
from pathlib import Path

import numpy as np
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


# White columns between the ground truth and the predictions.
GAP = 8


def side_by_side(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Two (H, W, 3) uint8 pictures next to each other, ``GAP`` white columns between them."""
    gap = np.full((left.shape[0], GAP, 3), 255, dtype=np.uint8)
    return np.concatenate([left, gap, right], axis=1)


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True)
    images = parser.add_mutually_exclusive_group(required=True)
    images.add_argument("--input", nargs="+", help="image files")
    images.add_argument("--dataset", help="a registered data set (e.g. synthetic_val): draw its "
                                           "first --num-images images")
    parser.add_argument("--num-images", type=int, default=4, help="with --dataset (default 4)")
    parser.add_argument("--show-gt", action="store_true",
                        help="with --dataset: each picture is the ground truth (with class "
                             "names), then the predictions")
    parser.add_argument("--output", required=True, type=Path, help="folder for the PNGs")
    parser.add_argument("--confidence-threshold", type=float, default=0.5)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config KEY VALUE pairs")
    return parser


def main(argv=None):
    parser = argument_parser()
    args = parser.parse_args(argv)
    if args.show_gt and not args.dataset:
        parser.error("--show-gt needs --dataset: ground truth comes from a registered data set")
    if args.num_images < 1:
        parser.error(f"--num-images must be a positive integer, got {args.num_images}")
    cfg = setup(args)
    predictor = Predictor(cfg)
    if args.dataset:
        records = list(islice(DatasetCatalog.get(args.dataset), args.num_images))
        metadata = MetadataCatalog.get(args.dataset)  # loading the set filled in its classes
    else:
        records = [{"file_name": path} for path in args.input]
        metadata = metadata_for(cfg)
    args.output.mkdir(parents=True, exist_ok=True)
    for record in records:
        path = record["file_name"]
        image = read_image(path, "BGR")
        instances = predictor(image)["instances"].to("cpu")
        rgb = image[:, :, ::-1]
        drawn = Visualizer(rgb, metadata).draw_instance_predictions(instances).get_image()
        if args.show_gt:
            truth = Visualizer(rgb, metadata).draw_dataset_dict(record).get_image()
            drawn = side_by_side(truth, drawn)
        target = args.output / (Path(path).stem + ".png")
        Image.fromarray(drawn).save(target)
        counted = (f", {len(record.get('annotations', []))} in the ground truth" if args.show_gt
                   else "")
        print(f"{path}: {len(instances)} instances{counted} -> {target}")


if __name__ == "__main__":
    main()

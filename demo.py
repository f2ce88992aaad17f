#!/usr/bin/env python
"""Run a trained model on images and write visualisations (Detectron2's DefaultPredictor, with
safe weight loading, and Visualizer).

    python demo.py --config-file configs/Synthetic/mask_rcnn_R_18_FPN_small_cpu.yaml \\
        --input datasets/synthetic_small/val/000000.png --output output/vis \\
        MODEL.WEIGHTS output/demo/model_final.pth
    python demo.py --config-file CFG --dataset synthetic_small_val --num-images 8 --show-gt \\
        --output output/vis MODEL.WEIGHTS output/demo/model_final.pth   # ground truth | predictions
"""

import argparse
import os
import re
import sys
from itertools import islice
from pathlib import Path

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from mask_rcnn_ext import load_config
from mask_rcnn_ext.data.images import read_image
from mask_rcnn_ext.drawing import visualizer
from mask_rcnn_ext.engine import Predictor
from mask_rcnn_ext.files import atomic_write, remove_interrupted_writes


def setup(args):
    cfg = load_config(args.config_file, args.opts)
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = args.confidence_threshold
    cfg.freeze()
    return cfg


def metadata_for(cfg):
    """The test set's metadata, for its class names: registered with them (the synthetic sets),
    or filled in by loading the set. Drawing needs nothing else of it: a set whose files are not
    here draws class numbers, with a warning, instead of stopping the demo."""
    if not cfg.DATASETS.TEST:
        return MetadataCatalog.get("__unnamed")
    name = cfg.DATASETS.TEST[0]
    metadata = MetadataCatalog.get(name)
    if metadata.get("thing_classes") is None and name in DatasetCatalog.list():
        try:
            DatasetCatalog.get(name)
        except OSError as error:
            print(f"warning: DATASETS.TEST's {name!r} cannot be read for its class names "
                  f"({error}); the drawings show class numbers", file=sys.stderr)
    return metadata


# White columns between the ground truth and the predictions.
GAP = 8
def side_by_side(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Two (H, W, 3) uint8 pictures next to each other, ``GAP`` white columns between them."""
    gap = np.full((left.shape[0], GAP, 3), 255, dtype=np.uint8)
    return np.concatenate([left, gap, right], axis=1)


def drawing_paths(inputs: list[str], folder: Path, overwrite: bool) -> list[Path]:
    """Where the drawing of each input goes: below ``folder``, at the input's place relative to
    the inputs' common folder, named after the input (``.png`` appended unless it is a PNG), so
    inputs of the same name in different folders keep apart. Raises ValueError, before anything
    is written, when a drawing would replace an input or (unless ``overwrite``) an existing
    file, or two inputs would share one."""
    resolved = [Path(path).resolve() for path in inputs]
    first_given: dict[Path, str] = {}
    for given, path in zip(inputs, resolved, strict=True):
        if path in first_given:
            also = f" (also as {first_given[path]})" if first_given[path] != given else ""
            raise ValueError(f"{given} is given twice{also}")
        first_given[path] = given
    root = Path(os.path.commonpath([path.parent for path in resolved]))
    targets, sources = [], {}
    for given, path in zip(inputs, resolved, strict=True):
        relative = path.relative_to(root)
        name = relative.name if relative.suffix.lower() == ".png" else f"{relative.name}.png"
        target = folder / relative.parent / name
        if target.resolve() in sources:
            raise ValueError(f"{sources[target.resolve()]} and {given} would both be drawn to "
                             f"{target}")
        sources[target.resolve()] = given
        targets.append(target)
    replaced = [(sources[target.resolve()], target) for target in targets
                if target.resolve() in first_given]
    if replaced:
        raise ValueError(f"the drawing of {replaced[0][0]} would replace the input "
                         f"{replaced[0][1]}: give --output a folder that holds no input")
    existing = [str(target) for target in targets if target.exists()]
    if existing and not overwrite:
        more = f" and {len(existing) - 3} more" if len(existing) > 3 else ""
        raise ValueError(f"{len(existing)} drawing(s) would replace existing files "
                         f"({', '.join(existing[:3])}{more}): give --overwrite to replace them, "
                         "or another --output")
    return targets


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
    parser.add_argument("--output", required=True, type=Path,
                        help="folder for the PNGs: the inputs' layout below their common folder, "
                             "each named after its input (.png appended unless it is a PNG)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace drawings that exist already (inputs are never replaced)")
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
    if args.dataset:
        records = list(islice(DatasetCatalog.get(args.dataset), args.num_images))
        metadata = MetadataCatalog.get(args.dataset)  # loading the set filled in its classes
    else:
        records = [{"file_name": path} for path in args.input]
        metadata = metadata_for(cfg)
    try:
        targets = drawing_paths([r["file_name"] for r in records], args.output, args.overwrite)
    except ValueError as error:
        parser.error(str(error))
    for folder in {target.parent for target in targets}:
        folder.mkdir(parents=True, exist_ok=True)
        names = "|".join(re.escape(t.name) for t in targets if t.parent == folder)
        remove_interrupted_writes(folder, names, "earlier demo.py drawings")
    predictor = Predictor(cfg)
    for record, target in zip(records, targets, strict=True):
        path = record["file_name"]
        image = read_image(path, "BGR")
        instances = predictor(image)["instances"].to("cpu")
        rgb = image[:, :, ::-1]
        drawn = visualizer(rgb, metadata).draw_instance_predictions(instances).get_image()
        if args.show_gt:
            truth = visualizer(rgb, metadata).draw_dataset_dict(record).get_image()
            drawn = side_by_side(truth, drawn)
        with atomic_write(target, "wb") as stream:
            Image.fromarray(drawn).save(stream, format="PNG")
        counted = (f", {len(record.get('annotations', []))} in the ground truth" if args.show_gt
                   else "")
        print(f"{path}: {len(instances)} instances{counted} -> {target}")


if __name__ == "__main__":
    main()

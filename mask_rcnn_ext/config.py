"""Config keys of mask_rcnn_ext. With their defaults, a model is stock Detectron2 Mask R-CNN.

The pooler types of the box, mask and keypoint heads (``MODEL.ROI_*_HEAD.POOLER_TYPE``) accept
every name in ``mask_rcnn_ext.modeling.POOLER_REGISTRY`` once the ROI heads are
``MaskRCNNExtROIHeads``; the mask head options apply to mask_rcnn_ext's mask heads.
"""

import logging
import os
from pathlib import Path

import yaml
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

__all__ = ["LAZY_CONFIG_KEYS", "add_mask_rcnn_ext_config", "is_lazy_config", "load_config",
           "load_lazy_config"]

logger = logging.getLogger(__name__)


def add_mask_rcnn_ext_config(cfg: CN) -> CN:
    """Add mask_rcnn_ext's keys to a Detectron2 config (in place; also returned)."""
    mask = cfg.MODEL.ROI_MASK_HEAD
    # Side of the predicted masks: 28 (paper), 56 or 112; one 2x deconvolution per doubling of the
    # pooler resolution (14 -> 28 is the paper's single deconvolution).
    mask.OUTPUT_RESOLUTION = 28
    # Mask loss: "sigmoid" (paper: per-class binary cross-entropy on the ground-truth class only)
    # or "softmax" (Table 2b ablation: a per-pixel multinomial over background + K classes).
    mask.LOSS = "sigmoid"
    # Hidden width of MaskRCNNMLPHead's two fc layers (paper Table 2e: 1024).
    mask.MLP_DIM = 1024

    # Mask Scoring R-CNN (Huang et al., CVPR 2019), MODEL.ROI_MASK_HEAD.NAME "MaskScoringHead": a
    # MaskIoU branch regresses the IoU of each predicted mask with its ground truth; at inference,
    # score = class score x predicted IoU.
    cfg.MODEL.ROI_MASK_SCORING = CN()
    scoring = cfg.MODEL.ROI_MASK_SCORING
    # 3x3 convolutions on [mask features, max-pooled predicted mask]; the last has stride 2.
    scoring.NUM_CONV = 4
    # Channels of those convolutions.
    scoring.CONV_DIM = 256
    # Hidden fc layers after the convolutions, and their width.
    scoring.NUM_FC = 2
    scoring.FC_DIM = 1024
    # Weight of the MaskIoU regression (L2) loss.
    scoring.LOSS_WEIGHT = 1.0
    # Predicted-mask probability threshold for the IoU target's binary mask.
    scoring.MASK_THRESHOLD = 0.5

    # Exact speed-ups (mask_rcnn_ext.modeling.speedups), applied by mask_rcnn_ext's Trainer and
    # Predictor; they keep the state-dict keys, so checkpoints stay stock.
    cfg.MODEL.SPEEDUPS = CN()
    # Apply each frozen batch norm through the convolution before it.
    cfg.MODEL.SPEEDUPS.FOLD_FROZEN_BATCHNORM = False
    # Activation layout: "contiguous" (stock), "channels_last", or "auto" (channels-last on CPU).
    cfg.MODEL.SPEEDUPS.MEMORY_FORMAT = "contiguous"

    # Which implementation runs every RoI pooler of the model (mask_rcnn_ext/layers/backends.py):
    # "auto" (chosen by device and mode), or "separable", "torchvision", "triton" (CUDA only),
    # "traceable" for all of them, e.g. "separable" where a GPU kernel misbehaves. A value that
    # does not implement a pooler type, or cannot run on MODEL.DEVICE, is refused by name.
    cfg.MODEL.ROI_POOLER_BACKEND = "auto"

    # COCO-format data sets to register before training, each [name, json_file, image_root]; the
    # names can then be used in DATASETS.TRAIN / DATASETS.TEST (train_net.py registers them).
    cfg.DATASETS.COCO_FORMAT = []

    # Boundary AP (Cheng et al., CVPR 2021) beside mask AP, as "boundary/AP" ...: off as in stock
    # Detectron2, on in mask_rcnn_ext's configs. A boundary band is the mask pixels within
    # DILATION_RATIO x the image diagonal of the mask's edge (the paper's 0.02).
    cfg.TEST.BOUNDARY_AP = False
    cfg.TEST.BOUNDARY_DILATION_RATIO = 0.02

    # Backbone pretraining by classifying the training set's object crops, where ImageNet weights
    # cannot be had (python -m mask_rcnn_ext.pretrain, which writes MODEL.WEIGHTS by default):
    # its iterations of 64 crops, and its SGD's peak learning rate and linear warm-up (then a
    # cosine decay); the detector's SOLVER keys are not used.
    cfg.PRETRAIN = CN()
    cfg.PRETRAIN.ITERATIONS = 600
    cfg.PRETRAIN.BASE_LR = 0.02
    cfg.PRETRAIN.WARMUP_ITERS = 20
    return cfg


def load_config(config_file: str, opts: list[str] | None = None) -> CN:
    """Detectron2's config plus mask_rcnn_ext's keys, merged with ``config_file`` and ``opts``.

    Unlike ``CfgNode.merge_from_file``'s default, YAML tags that construct Python objects are
    refused (a config file can then not run code). Every failure names the file or option.
    """
    path = Path(config_file)
    if not path.is_file():
        raise FileNotFoundError(f"config file {config_file} does not exist")
    if not path.read_text().strip():
        raise ValueError(f"config file {config_file} is empty")
    cfg = add_mask_rcnn_ext_config(get_cfg())
    try:
        _check_bases(str(path), [])
        cfg.merge_from_file(str(path), allow_unsafe=False)
    except yaml.constructor.ConstructorError as error:
        raise ValueError(
            f"refusing to load {config_file} (or a _BASE_ it names): it uses a YAML tag that "
            f"constructs Python objects, which could run code ({error.problem})"
        ) from error
    except KeyError as error:
        raise KeyError(_unknown_key_hint(f"{config_file}: {error.args[0]}")) from error
    try:
        cfg.merge_from_list(list(opts or []))
    except (KeyError, AssertionError) as error:  # yacs asserts on unknown keys and odd lists
        message = f"command-line option: {error.args[0] if error.args else error}"
        if "Non-existent" in message:
            raise KeyError(_unknown_key_hint(message)) from error
        raise ValueError(message) from error
    _check_counts(cfg, config_file)
    return cfg


# What mask_rcnn_ext.engine.LazyTrainer reads from a LazyConfig, as Detectron2's
# tools/lazyconfig_train_net.py does (configs/common/*.py define them).
LAZY_CONFIG_KEYS = ("model", "dataloader.train", "dataloader.test", "optimizer", "lr_multiplier",
                    "train.output_dir", "train.init_checkpoint", "train.max_iter", "train.device",
                    "train.amp.enabled", "train.checkpointer", "train.eval_period",
                    "train.log_period")


def is_lazy_config(config_file: str) -> bool:
    """Whether ``config_file`` is a LazyConfig (Python) file rather than a YAML one."""
    return str(config_file).endswith(".py")


def load_lazy_config(config_file: str, overrides: list[str] | None = None):
    """A LazyConfig (``configs/**/*.py``, Python run as it is loaded) with ``overrides``
    (``key=value``, Hydra's syntax, as Detectron2's lazyconfig trainer takes them) applied.

    Unlike Detectron2's ``LazyConfig.apply_overrides``, an override of a key that the config does
    not have is an error naming it (Hydra's ``+key=value`` adds one on purpose), and so is a
    config without one of :data:`LAZY_CONFIG_KEYS`; the file is named either way.
    """
    from detectron2.config import LazyConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    if not Path(config_file).is_file():
        raise FileNotFoundError(f"config file {config_file} does not exist")
    cfg = LazyConfig.load(str(config_file))
    missing = object()
    for key in LAZY_CONFIG_KEYS:
        if OmegaConf.select(cfg, key, default=missing) is missing:
            raise KeyError(f"{config_file} does not define {key!r}, which training and "
                           f"evaluation read (it needs {', '.join(LAZY_CONFIG_KEYS)})")
    for override in OverridesParser.create().parse_overrides(list(overrides or [])):
        key = override.key_or_group
        if not override.is_add() and OmegaConf.select(cfg, key, default=missing) is missing:
            raise KeyError(f"command-line override {override.input_line!r}: {config_file} has no "
                           f"key {key!r} (to add one, write +{key}=...)")
    return LazyConfig.apply_overrides(cfg, list(overrides or []))


# Counts that must be positive integers; Detectron2 fails on them late (a negative MAX_ITER trains
# nothing and then fails in the LR scheduler; 0 classes fails in the heads' loss), naming no key.
_POSITIVE_COUNTS = ("SOLVER.MAX_ITER", "SOLVER.IMS_PER_BATCH", "SOLVER.CHECKPOINT_PERIOD",
                    "MODEL.ROI_HEADS.NUM_CLASSES", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
                    "MODEL.RPN.BATCH_SIZE_PER_IMAGE", "TEST.DETECTIONS_PER_IMAGE")


def _check_counts(cfg: CN, config_file: str) -> None:
    for key in _POSITIVE_COUNTS:
        value = cfg
        for part in key.split("."):
            value = value[part]
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{key} must be a positive integer, got {value!r} (from "
                             f"{config_file} and the command-line options)")


def _check_bases(config_file: str, including: list[str]) -> None:
    """Raise, naming the files, if the ``_BASE_`` chain of ``config_file`` (resolved as fvcore's
    ``load_yaml_with_base`` resolves it) has a cycle or a missing file; ``including`` lists the
    files that led to it. fvcore would recurse until a RecursionError naming no file, or name a
    missing base without the file that refers to it."""
    resolved = os.path.realpath(config_file)
    chain = [*including, config_file]
    if resolved in map(os.path.realpath, including):
        raise ValueError("config files include each other through _BASE_: "
                         + " -> ".join(chain))
    with open(config_file) as stream:
        content = yaml.safe_load(stream) or {}
    bases = content.get("_BASE_", []) if isinstance(content, dict) else []
    for base in bases if isinstance(bases, list) else [bases]:
        base = os.path.expanduser(base) if base.startswith("~") else base
        if base.startswith(("http://", "https://")):
            continue  # fetched by fvcore's path manager
        if not base.startswith("/"):
            base = os.path.join(os.path.dirname(config_file), base)
        if not os.path.isfile(base):
            raise FileNotFoundError(f"config file {base}, the _BASE_ of {config_file}, does not "
                                    "exist" + "".join(f" (included by {f})"
                                                      for f in reversed(including)))
        _check_bases(base, chain)


def _unknown_key_hint(message: str) -> str:
    return (f"{message}. A key that belongs to a plugin exists only after its add_*_config "
            "(mask_rcnn_ext's: add_mask_rcnn_ext_config; others, e.g. PointRend's "
            "add_pointrend_config, must be called by your script first).")

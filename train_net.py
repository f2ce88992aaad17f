#!/usr/bin/env python
"""Train or evaluate Mask R-CNN with mask_rcnn_ext's components on Detectron2's engine.

    python train_net.py --config-file configs/Synthetic/mask_rcnn_R_18_FPN_cpu.yaml
    python train_net.py --config-file CFG --eval-only MODEL.WEIGHTS path/to/model_final.pth
    python train_net.py --config-file CFG --resume            # continue from OUTPUT_DIR
    python train_net.py --config-file CFG --num-gpus 2        # 2 processes: GPUs, or CPU (gloo)
    python train_net.py --config-file CFG --dataset my_train my.json images/ \
        DATASETS.TRAIN "('my_train',)"                        # your own COCO-format data
    python train_net.py --config-file configs/Synthetic/mask_rcnn_R_18_FPN_cpu.py \
        optimizer.lr=0.02                                     # a LazyConfig: key=value overrides
"""

from detectron2.engine import default_argument_parser

from mask_rcnn_ext import load_config
from mask_rcnn_ext.checkpoint import SafeCheckpointer
from mask_rcnn_ext.config import is_lazy_config, load_lazy_config
from mask_rcnn_ext.data import register_coco_format
from mask_rcnn_ext.engine import LazyTrainer, Trainer, launch
from mask_rcnn_ext.run import setup_run


def argument_parser():
    """Detectron2's ``default_argument_parser()`` plus this script's options; ``main`` and
    ``setup`` also take the arguments of Detectron2's parser alone."""
    parser = default_argument_parser()
    parser.add_argument("--dataset", nargs=3, action="append", default=[],
                        metavar=("NAME", "JSON", "IMAGE_ROOT"),
                        help="register a COCO-format data set (repeatable)")
    parser.add_argument("--skip-weight-checks", action="store_true",
                        help="with --eval-only: evaluate weights that leave model weights unset "
                             "(missing, or of another shape) or hold NaN or Inf, which is "
                             "otherwise refused")
    return parser


def trainer_class_for(args):
    return LazyTrainer if is_lazy_config(args.config_file) else Trainer


def setup(args):
    """The config (a YAML CfgNode, or a LazyConfig for a ``.py`` file), its data sets registered
    and the run set up (Detectron2's logging and output folder, the folder guarded:
    :func:`mask_rcnn_ext.run.setup_run`)."""
    lazy = is_lazy_config(args.config_file)
    cfg = (load_lazy_config if lazy else load_config)(args.config_file, args.opts)
    datasets = [] if lazy else cfg.DATASETS.COCO_FORMAT
    for name, json_file, image_root in [*datasets, *getattr(args, "dataset", [])]:
        register_coco_format(name, json_file, image_root)
    if not lazy:
        cfg.freeze()
    setup_run(cfg, args, trainer_class_for(args))
    return cfg


def main(args):
    cfg = setup(args)
    trainer_class = trainer_class_for(args)
    if args.eval_only:
        trainer_class.check_class_count(cfg, "test")  # before the model is built and loaded
        model = trainer_class.build_model(cfg)
        SafeCheckpointer(model, save_dir=trainer_class.output_dir(cfg),
                         check_weights=not getattr(args, "skip_weight_checks", False)
                         ).resume_or_load(trainer_class.initial_weights(cfg), resume=args.resume)
        return trainer_class.test(cfg, model)
    trainer = trainer_class(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = argument_parser().parse_args()
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))

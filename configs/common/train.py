"""LazyConfig: optimizer, schedule and training settings of the YAML configs: Detectron2 v0.6's
defaults and the 1x schedule (90k iterations of 16 images, learning rate 0.02 divided by 10 at
60k and 80k, 1000 iterations of linear warm-up from 0.001 times it; SGD, momentum 0.9, weight
decay 1e-4, none on normalisation layers)."""

import torch
from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from detectron2.solver.build import get_default_optimizer_params
from fvcore.common.param_scheduler import MultiStepParamScheduler

optimizer = L(torch.optim.SGD)(
    params=L(get_default_optimizer_params)(weight_decay_norm=0.0),  # params.model: the trainer's
    lr=0.02,
    momentum=0.9,
    weight_decay=1e-4,
)

lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(values=[1.0, 0.1, 0.01], milestones=[60000, 80000],
                                         num_updates="${train.max_iter}"),
    warmup_length=1000 / 90000,  # a fraction of train.max_iter
    warmup_factor=0.001,
)

train = dict(
    output_dir="./output",
    init_checkpoint="",  # weights to start from; `--eval-only` evaluates these
    max_iter=90000,
    device="cuda",
    amp=dict(enabled=False),  # float16 mixed precision; CUDA only
    ddp=dict(broadcast_buffers=False, find_unused_parameters=False, fp16_compression=False),
    checkpointer=dict(period=5000, max_to_keep=100),
    eval_period=0,  # 0: evaluate once, after the last iteration
    log_period=20,
    seed=-1,  # < 0: a different seed per run
    # mask_rcnn_ext.modeling.speedups.speed_up: exact, measured faster on CPU
    # (benchmarks/results/summary.md); as MODEL.SPEEDUPS in the YAML configs.
    speedups=dict(fold_frozen_batchnorm=True, memory_format="auto"),
)

"""Training and evaluation on Detectron2's engine, on GPUs or on CPU-only machines.

Several processes are started by :func:`launch`, Detectron2's own ``launch`` (which uses gloo
without a GPU; on v0.6 through the compat layer's fix "launch-on-cpu-with-gloo") whose workers
stop when the launching process dies. Detectron2's ``create_ddp_model`` passes ``device_ids``
even for CPU modules, which DistributedDataParallel rejects, in v0.6 and upstream alike:
:class:`Trainer` wraps CPU models without them.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import signal
import sys
import weakref
from collections import defaultdict
from collections.abc import Sequence
from typing import NamedTuple

import detectron2.data.transforms as T
import detectron2.engine.defaults as detectron2_defaults
import numpy as np
import torch
from detectron2.config import instantiate
from detectron2.data import MetadataCatalog, build_detection_test_loader
from detectron2.engine import (
    AMPTrainer,
    DefaultPredictor,
    DefaultTrainer,
    SimpleTrainer,
    TrainerBase,
    default_writers,
    hooks,
)
from detectron2.engine import launch as detectron2_launch
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.modeling import build_model
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from omegaconf import OmegaConf

from .checkpoint import SafeCheckpointer, StateLayout
from .data.build import build_checked_train_loader, check_class_count, training_dataset_dicts
from .data.images import model_image
from .data.mapper import ImageCheckingMapper
from .evaluation import FastCOCOEvaluator
from .modeling.speedups import apply_speedups, speed_up

__all__ = ["BatchPredictor", "LazyTrainer", "Predictor", "Trainer", "launch"]


_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _stop_with_launcher(launcher: int, main_func, *args):
    """Run ``main_func(*args)`` in a worker that receives SIGTERM when its launcher dies, and
    close its process group when it is done.

    PyTorch's spawn asks for SIGINT on the parent's death, but a process started in the
    background (``cmd &``, nohup, most job schedulers) ignores SIGINT, so the workers of a killed
    launcher trained on to the end. SIGTERM ends a Python process unless it installs a handler."""
    libc = ctypes.CDLL(None, use_errno=True)
    if os.getpid() != launcher and hasattr(libc, "prctl"):  # Linux; elsewhere no effect
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != launcher:  # it died before the request was made
            os.kill(os.getpid(), signal.SIGTERM)
    result = main_func(*args)
    if os.getpid() == launcher:  # one process: nothing was spawned
        return result
    # A spawned worker that is done ends here, not at the interpreter's exit, where gloo's threads
    # sometimes abort it ("terminate called without an active exception": about 1 run in 15 of
    # a 2-process test, also after destroy_process_group), and the launcher then reports the
    # finished run as failed. Only on success: a failed worker's error must reach the launcher.
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def launch(main_func, num_gpus_per_machine: int, *args, **kwargs) -> None:
    """Detectron2's ``launch`` (same arguments), whose worker processes stop when the launching
    process dies (killed, or ended by its job scheduler) instead of training on."""
    detectron2_launch(functools.partial(_stop_with_launcher, os.getpid(), main_func),
                      num_gpus_per_machine, *args, **kwargs)


def _create_ddp_model(model, **kwargs):
    """Detectron2's create_ddp_model, leaving ``device_ids`` unset for a CPU model: Detectron2
    passes them, which DistributedDataParallel refuses for CPU modules."""
    if next(model.parameters()).device.type == "cpu":
        kwargs.setdefault("device_ids", None)
    return detectron2_defaults.create_ddp_model(model, **kwargs)


def _check_cuda_available(device: str, key: str, to_cpu: str) -> None:
    """A CUDA ``device`` (config key ``key``) on a machine without a GPU fails deep inside PyTorch
    when the model moves there, naming no key: say it first, with the setting ``to_cpu``."""
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{key} is {device!r}, but no CUDA GPU is available on this machine; "
                         f"{to_cpu} runs on the CPU")


def _check_amp_device(enabled: bool, device: str, keys: tuple[str, str]) -> None:
    """Detectron2's AMPTrainer runs float16 autocast on CUDA only, and v0.6 says so by an
    assertion in its first step, after data and model are set up: say it first, naming ``keys``
    (the config's AMP switch and device)."""
    if not enabled:
        return
    if not device.startswith("cuda") or not torch.cuda.is_available():
        where = (f"{keys[1]} is {device!r}" if not device.startswith("cuda")
                 else "no CUDA GPU is available")
        raise ValueError(
            f"{keys[0]} is True, but {where}: Detectron2's mixed-precision trainer needs a CUDA "
            f"GPU. Set {keys[0]} False to train in float32 on this machine.")


class TrainingSettings(NamedTuple):
    """What a training run's set-up reads from its config, by key names of either kind."""

    amp: bool
    device: str
    amp_keys: tuple[str, str]  # how errors name the AMP switch and the device
    ddp: dict  # create_ddp_model's keyword arguments
    max_iter: int


class Trainer(DefaultTrainer):
    """Detectron2's DefaultTrainer, evaluating instance segmentation (COCOEvaluator's bbox and segm
    AP, computed faster by :class:`FastCOCOEvaluator`) into ``OUTPUT_DIR/inference``, trainable
    with several CPU processes, and writing its checkpoints atomically
    (:class:`SafeCheckpointer`).

    The model gets ``MODEL.SPEEDUPS`` (:func:`apply_speedups`). Bad data: degenerate training
    annotations are dropped, with counts in the log (:func:`drop_degenerate_annotations`); an
    unreadable image is skipped in training and fatal in evaluation, named either way
    (:class:`ImageCheckingMapper`); data sets whose number of categories is not the model's are
    refused before training and before evaluation (:meth:`check_class_count`). The output folder
    is guarded by ``train_net.py``'s set-up (:func:`mask_rcnn_ext.run.setup_run`), which a script
    of your own calls where Detectron2's would call ``default_setup``.
    """

    def __init__(self, cfg):
        # DefaultTrainer's set-up, as one path for both kinds of config: each part comes from a
        # method that LazyTrainer overrides for Python configs, and the checks run first.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = self.scaled_to_workers(cfg)
        settings = self.settings(cfg)
        _check_amp_device(settings.amp, settings.device, settings.amp_keys)
        self.check_class_count(cfg, "test")  # the training sets' once they are loaded
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = _create_ddp_model(model, **settings.ddp)
        self._trainer = (AMPTrainer if settings.amp else SimpleTrainer)(model, data_loader,
                                                                        optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = SafeCheckpointer(model, self.output_dir(cfg),
                                               trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = settings.max_iter
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def scaled_to_workers(cls, cfg):
        """``cfg`` for this many processes (DefaultTrainer's ``auto_scale_workers``)."""
        return DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())

    @classmethod
    def settings(cls, cfg) -> TrainingSettings:
        return TrainingSettings(amp=cfg.SOLVER.AMP.ENABLED, device=cfg.MODEL.DEVICE,
                                amp_keys=("SOLVER.AMP.ENABLED", "MODEL.DEVICE"),
                                ddp={"broadcast_buffers": False}, max_iter=cfg.SOLVER.MAX_ITER)

    @classmethod
    def check_class_count(cls, cfg, split: str) -> None:
        """The model's number of classes against the categories of the ``split`` ("train" or
        "test") data sets (:func:`~mask_rcnn_ext.data.build.check_class_count`)."""
        check_class_count(cfg.DATASETS[split.upper()], cfg.MODEL.ROI_HEADS.NUM_CLASSES,
                          names_key=f"DATASETS.{split.upper()}",
                          classes_key="MODEL.ROI_HEADS.NUM_CLASSES")

    def train(self):
        try:
            return self._run_training()
        except FloatingPointError:
            if comm.is_main_process():
                logging.getLogger(__name__).error(
                    f"Training stopped at iteration {self.iter}: NaN or Inf in the loss or the "
                    f"weights. {self.checkpointer.resume_hint()}"
                    + (" (a lower SOLVER.BASE_LR or longer SOLVER.WARMUP_ITERS may avoid the "
                       "divergence)." if self.checkpointer.has_checkpoint() else ""))
            raise

    def _run_training(self):
        return super().train()

    def resume_or_load(self, resume: bool = True) -> None:
        """Detectron2's, and when a resumed run has no iterations left but its
        ``model_final.pth`` is missing (a save killed mid-write), it is written from the last
        checkpoint, which holds the same final weights: else no later run would ever write it."""
        # DefaultTrainer's, with the weights named by the config's kind.
        self.checkpointer.resume_or_load(self.initial_weights(self.cfg), resume=resume)
        if resume and self.checkpointer.has_checkpoint():
            self.start_iter = self.iter + 1
        final = os.path.join(self.checkpointer.save_dir, "model_final.pth")
        if (resume and self.start_iter >= self.max_iter and comm.is_main_process()
                and not os.path.exists(final)):
            logging.getLogger(__name__).warning(
                f"All {self.max_iter} iterations were done, but {final} is missing (its save was "
                f"interrupted): writing it from {self.checkpointer.get_checkpoint_file()}")
            self.checkpointer.save("model_final", iteration=self.start_iter - 1)

    @classmethod
    def initial_weights(cls, cfg) -> str:
        """The weights a run starts from, and ``--eval-only`` evaluates."""
        return cfg.MODEL.WEIGHTS

    # The config key of the run's output folder, as errors name it.
    output_dir_key = "OUTPUT_DIR"

    @classmethod
    def output_dir(cls, cfg) -> str:
        return cfg.OUTPUT_DIR

    @classmethod
    def state_layout(cls, cfg) -> StateLayout:
        """What a run of ``cfg`` checkpoints, built on the meta device (nothing allocated or
        initialised, 0.1 s for an R-50): its model's state shapes and its optimizer's groups."""
        meta = cfg.clone()
        meta.defrost()
        meta.MODEL.DEVICE = "meta"
        model = build_model(meta)  # MODEL.SPEEDUPS keep the state's keys and shapes
        return StateLayout.of(model, cls.build_optimizer(meta, model))

    @classmethod
    def build_model(cls, cfg):
        _check_cuda_available(cfg.MODEL.DEVICE, "MODEL.DEVICE", "MODEL.DEVICE cpu")
        return apply_speedups(super().build_model(cfg), cfg)

    @classmethod
    def build_train_loader(cls, cfg):
        names = cfg.DATASETS.TRAIN
        dataset = training_dataset_dicts(
            names, mask_format=cfg.INPUT.MASK_FORMAT if cfg.MODEL.MASK_ON else None,
            filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            min_keypoints=(cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE
                           if cfg.MODEL.KEYPOINT_ON else 0),
            proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
            description=f"DATASETS.TRAIN {tuple(names)}")
        cls.check_class_count(cfg, "train")
        return build_checked_train_loader(cfg, dataset=dataset,
                                          mapper=ImageCheckingMapper(cfg, is_train=True))

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """DefaultTrainer's, once the test sets' categories are checked against the model's."""
        cls.check_class_count(cfg, "test")
        return super().test(cfg, model, evaluators)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(cfg, dataset_name,
                                           mapper=ImageCheckingMapper(cfg, is_train=False))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
        return FastCOCOEvaluator(dataset_name, output_dir=output_folder,
                                 boundary_ap=cfg.TEST.BOUNDARY_AP,
                                 boundary_dilation_ratio=cfg.TEST.BOUNDARY_DILATION_RATIO)


class LazyTrainer(Trainer):
    """:class:`Trainer` for a LazyConfig (Detectron2's Python configs; ours are
    ``configs/**/*.py``): it trains what Detectron2's ``tools/lazyconfig_train_net.py`` trains,
    with Trainer's atomic checkpoints, CPU data parallelism, evaluation and errors.

    The config defines ``model``, ``dataloader.train``, ``dataloader.test``,
    ``dataloader.evaluator`` (optional), ``optimizer`` (its ``params.model`` is set here),
    ``lr_multiplier`` (a ParamScheduler over ``train.max_iter`` iterations) and ``train``: as in
    Detectron2's ``configs/common/train.py``, plus ``speedups`` (the keyword arguments of
    :func:`~mask_rcnn_ext.modeling.speedups.speed_up`; none without it). What the data loaders
    do with bad data is up to the functions the config calls; ``configs/common/`` calls this
    project's (:mod:`mask_rcnn_ext.data.build`).
    """

    @classmethod
    def scaled_to_workers(cls, cfg):
        return cfg  # as Detectron2's lazyconfig_train_net: the config says the total batch

    @classmethod
    def settings(cls, cfg) -> TrainingSettings:
        train = cfg.train
        return TrainingSettings(amp=train.amp.enabled, device=train.device,
                                amp_keys=("train.amp.enabled", "train.device"),
                                ddp=dict(train.get("ddp", {})), max_iter=train.max_iter)

    @classmethod
    def build_optimizer(cls, cfg, model):
        cfg.optimizer.params.model = model
        return instantiate(cfg.optimizer)

    @classmethod
    def build_train_loader(cls, cfg):
        data_loader = instantiate(cfg.dataloader.train)
        cls.check_class_count(cfg, "train")  # the sets are loaded now
        return data_loader

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        try:
            return instantiate(cfg.lr_multiplier)  # hooks.LRScheduler applies it
        except ValueError as error:  # fvcore's messages name no key
            raise ValueError(f"lr_multiplier: {error} (train.max_iter is {cfg.train.max_iter}; "
                             "milestones must lie below it)") from error

    @classmethod
    def initial_weights(cls, cfg) -> str:
        return cfg.train.init_checkpoint

    @classmethod
    def check_class_count(cls, cfg, split: str) -> None:
        """As Trainer's, for configs that name their sets (``dataloader.<split>.dataset.names``)
        and the model's classes (``model.roi_heads.num_classes``); others are not checked."""
        names_key = f"dataloader.{split}.dataset.names"
        names = OmegaConf.select(cfg, names_key, default=None)
        num_classes = OmegaConf.select(cfg, "model.roi_heads.num_classes", default=None)
        if names is not None and num_classes is not None:
            check_class_count([names] if isinstance(names, str) else list(names), num_classes,
                              names_key=names_key, classes_key="model.roi_heads.num_classes")

    output_dir_key = "train.output_dir"

    @classmethod
    def output_dir(cls, cfg) -> str:
        return cfg.train.output_dir

    @classmethod
    def state_layout(cls, cfg) -> StateLayout:
        with torch.device("meta"):
            model = instantiate(cfg.model)
        optimizer = OmegaConf.masked_copy(cfg, ["optimizer"]).optimizer  # cfg stays as it is
        optimizer.params.model = model
        return StateLayout.of(model, instantiate(optimizer))

    def _run_training(self):
        TrainerBase.train(self, self.start_iter, self.max_iter)
        return getattr(self, "_last_eval_results", None)

    def build_hooks(self):
        train = self.cfg.train

        def evaluate():
            self._last_eval_results = self.test(self.cfg, self.model)
            return self._last_eval_results

        main = comm.is_main_process()
        return [
            hooks.IterationTimer(),
            hooks.LRScheduler(),
            hooks.PeriodicCheckpointer(self.checkpointer, **train.checkpointer) if main else None,
            hooks.EvalHook(train.eval_period, evaluate),
            hooks.PeriodicWriter(self.build_writers(), period=train.log_period) if main else None,
        ]

    def build_writers(self):
        return default_writers(self.output_dir(self.cfg), self.max_iter)

    @classmethod
    def build_model(cls, cfg):
        """``cfg.model`` on ``cfg.train.device``, with ``cfg.train.speedups`` when it is set."""
        _check_cuda_available(cfg.train.device, "train.device", "train.device=cpu")
        model = instantiate(cfg.model).to(cfg.train.device)
        speedups = cfg.train.get("speedups")
        if speedups:
            speed_up(model, **speedups, device=cfg.train.device)
        return model

    @classmethod
    def test(cls, cfg, model):
        """Evaluate ``model`` on ``cfg.dataloader.test`` with ``cfg.dataloader.evaluator`` and
        print the results as Detectron2's trainers do; {} without an evaluator."""
        if "evaluator" not in cfg.dataloader:
            return {}
        cls.check_class_count(cfg, "test")
        results = inference_on_dataset(model, instantiate(cfg.dataloader.test),
                                       instantiate(cfg.dataloader.evaluator))
        if comm.is_main_process():
            print_csv_format(results)
        return results


class Predictor(DefaultPredictor):
    """Detectron2's DefaultPredictor (one BGR/RGB image in, its ``instances`` out), loading
    ``MODEL.WEIGHTS`` with :class:`SafeCheckpointer` (DefaultPredictor unpickles ``.pkl`` weights
    with ``pickle``, which runs any code the file names) and applying ``MODEL.SPEEDUPS``.

    ``check_weights``: refuse weights that leave model weights unset (missing or of another
    shape, e.g. a checkpoint trained with another NUM_CLASSES) or hold NaN or Inf
    (:class:`~mask_rcnn_ext.checkpoint.UnusableWeightsError`); DefaultPredictor only logs the
    mismatch and predicts with random weights."""

    def __init__(self, cfg, *, check_weights: bool = True):
        # The parent's __init__ would load the weights with DetectionCheckpointer; the rest of
        # the set-up is the parent's, attribute for attribute, so its __call__ works unchanged.
        self.cfg = cfg.clone()
        _check_cuda_available(cfg.MODEL.DEVICE, "MODEL.DEVICE", "MODEL.DEVICE cpu")
        self.model = apply_speedups(build_model(self.cfg).eval(), self.cfg)
        if cfg.DATASETS.TEST:
            self.metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0])
        SafeCheckpointer(self.model, check_weights=check_weights).load(cfg.MODEL.WEIGHTS)
        self.aug = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
        self.input_format = cfg.INPUT.FORMAT

    def __call__(self, original_image: np.ndarray) -> dict:
        """DefaultPredictor's, for an image that :func:`~mask_rcnn_ext.data.images.model_image`
        accepts (a grayscale one converted); anything else is a ValueError saying why."""
        return super().__call__(model_image(original_image, self.input_format))


class BatchPredictor(Predictor):
    """:class:`Predictor` for many images: ``predictor([image, ...])`` -> their outputs, in order
    (each a dict with ``instances``), each what ``Predictor`` gives for that image alone.

    Images whose resized and padded sizes are equal run through the model together,
    ``batch_size`` at a time, in any order of the list. Images of different sizes are never
    batched with each other: padding an image to a larger one's size changes its features near its
    borders (convolutions see features computed in the padding, not zeros) and, with group norm,
    everywhere. Each batch is prepared when it runs, so a long list costs the memory of one batch.
    """

    def __init__(self, cfg, *, batch_size: int = 4, check_weights: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        super().__init__(cfg, check_weights=check_weights)
        self.batch_size = batch_size

    def __call__(self, images: Sequence[np.ndarray]) -> list[dict]:
        if isinstance(images, np.ndarray):  # its rows would be taken for images
            raise ValueError(f"BatchPredictor takes a list of images, got one array of shape "
                             f"{images.shape}; for one image, pass [image] or use Predictor")
        images = [model_image(image, self.input_format, f"image {index} of the list")
                  for index, image in enumerate(images)]
        divisor = max(self.model.backbone.size_divisibility, 1)
        resizes = [self.aug.get_transform(image) for image in images]
        same_size: dict[tuple[int, int], list[int]] = defaultdict(list)
        for index, resize in enumerate(resizes):
            same_size[(-(-resize.new_h // divisor), -(-resize.new_w // divisor))].append(index)
        outputs: list[dict] = [{}] * len(images)
        with torch.no_grad():
            for indices in same_size.values():
                for start in range(0, len(indices), self.batch_size):
                    batch = indices[start:start + self.batch_size]
                    predicted = self.model([self._model_input(images[i], resizes[i])
                                            for i in batch])
                    for index, output in zip(batch, predicted, strict=True):
                        outputs[index] = output
        return outputs

    def _model_input(self, image: np.ndarray, resize: T.Transform) -> dict:
        """The model's input for one (H, W, C) image in BGR order, resized by ``resize``, as
        DefaultPredictor makes it."""
        if self.input_format == "RGB":
            image = image[:, :, ::-1]
        resized = resize.apply_image(image)
        return {"image": torch.as_tensor(resized.astype("float32").transpose(2, 0, 1)),
                "height": image.shape[0], "width": image.shape[1]}

"""Checkpoints that are written atomically, never hold non-finite weights, and load without running
code from the file.

- Writing: fvcore's Checkpointer writes ``{name}.pth`` and ``last_checkpoint`` in place, so a
  process killed while writing leaves a truncated file behind. :class:`SafeCheckpointer` writes
  each to a temporary file in the same folder, flushes it to disk and renames it over the target:
  a reader (``--resume``) sees either the previous complete file or the new complete one. It
  refuses to save weights that hold NaN or Inf, so the last checkpoint of a diverged run is a good
  one.
- Reading: Detectron2 reads ``.pkl`` weights (its model zoo, Caffe2) with ``pickle.load``, which
  runs whatever code the file names. Here ``.pkl`` files are unpickled with an allow-list that only
  rebuilds NumPy arrays, and torch files are read with ``torch.load(weights_only=True)``
  (tensors, plus the same NumPy allow-list).
"""

from __future__ import annotations

import dataclasses
import os
import pickle
from collections import OrderedDict

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils.file_io import PathManager

from .files import atomic_write, remove_interrupted_writes

__all__ = ["CheckpointSaveError", "SafeCheckpointer", "StateLayout", "UnsafeCheckpointError",
           "UnusableWeightsError", "load_pickled_arrays", "remove_interrupted_saves",
           "write_checkpoint"]


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint asks to build Python objects other than tensors and arrays."""


class UnusableWeightsError(ValueError):
    """Weights to evaluate or predict with that leave model weights unset, or hold NaN or Inf."""


class CheckpointSaveError(OSError):
    """A checkpoint could not be written (no space left on the device, ...); the folder's earlier
    checkpoints are as they were."""


_OVERRIDE_HINT = ("To use them anyway: train_net.py --eval-only --skip-weight-checks, "
                  "Predictor(cfg, check_weights=False), or export --skip-weight-checks.")


def _first(names: list[str], count: int = 5) -> str:
    return ", ".join(names[:count]) + (f", ... ({len(names) - count} more)"
                                       if len(names) > count else "")


# Only names of these targets are ever removed from a checkpoint folder as leftovers of killed
# saves (mask_rcnn_ext.files.remove_interrupted_writes).
_CHECKPOINT_FILES = r".+\.pth|last_checkpoint"


def write_checkpoint(path: str, data: dict) -> None:
    """``torch.save(data)`` to ``path`` (its folder made if missing), atomically: a save that is
    killed leaves the previous file, never a truncated one."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with atomic_write(path, "wb") as stream:
        torch.save(data, stream)


def remove_interrupted_saves(folder: str) -> list[str]:
    """Remove the temporary files that saves killed mid-write left in ``folder``: only names of
    this module's pattern, and only files no process holds locked (a save in progress does).
    Logs their names and total size; returns their paths."""
    return remove_interrupted_writes(folder, _CHECKPOINT_FILES, "checkpoint saves")


def _os_error_in(error: BaseException) -> OSError | None:
    """The operating system's error behind ``error``: torch.save reports a failed write as a
    RuntimeError of its zip writer ("unexpected pos ..."), with the OSError in its chain."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


# What a pickled dict of NumPy arrays needs (from NumPy 1 and 2 writers), and nothing else.
_ARRAY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): np.ndarray(0).__reduce__()[0],
    ("numpy._core.multiarray", "_reconstruct"): np.ndarray(0).__reduce__()[0],
    ("numpy.core.multiarray", "scalar"): np.float32(0).__reduce__()[0],
    ("numpy._core.multiarray", "scalar"): np.float32(0).__reduce__()[0],
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("collections", "OrderedDict"): OrderedDict,
}

# The same allow-list for torch.load (NumPy arrays stored in .pth files), which also checks the
# class of each object it builds: NumPy's numeric dtypes.
_TORCH_ARRAY_GLOBALS = [
    *((obj, f"{module}.{name}") for (module, name), obj in _ARRAY_GLOBALS.items()),
    *(type(np.dtype(code)) for code in np.typecodes["All"] if code not in "OUVSaMm"),
]


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return _ARRAY_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafeCheckpointError(f"it asks for the Python object {module}.{name}, and "
                                        "only NumPy arrays are allowed") from None


def load_pickled_arrays(stream) -> object:
    """Unpickle ``stream`` (a binary file, Python 2 or 3 pickle) that holds dicts/lists of NumPy
    arrays, numbers and strings. Raises :class:`UnsafeCheckpointError` for anything else."""
    return _ArrayUnpickler(stream, encoding="latin1").load()


@dataclasses.dataclass(frozen=True)
class StateLayout:
    """The structure of a training's state, which ``--resume`` must find unchanged: the shape
    of each tensor of the model's state, and the number of parameters in each of the optimizer's
    parameter groups."""

    shapes: dict[str, tuple[int, ...]]
    group_sizes: tuple[int, ...] | None  # None: no optimizer state (it will not be loaded)

    @classmethod
    def of(cls, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> StateLayout:
        return cls({key: tuple(value.shape) for key, value in model.state_dict().items()},
                   tuple(len(group["params"]) for group in optimizer.param_groups))

    @classmethod
    def of_checkpoint(cls, path: str) -> StateLayout:
        """The layout of the training state saved in ``path`` (memory-mapped: the tensors'
        data is not read)."""
        with torch.serialization.safe_globals(_TORCH_ARRAY_GLOBALS):
            saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        # Detectron2's trainers keep the optimizer's state in their own (with upstream's
        # "_trainer" key, or the compat fix trainer-checkpoints-optimizer); a checkpointer made
        # with the optimizer as a checkpointable keeps it at the top.
        optimizer = saved.get("trainer", {}).get("_trainer", {}).get("optimizer",
                                                                     saved.get("optimizer"))
        return cls({key: tuple(value.shape) for key, value in saved["model"].items()},
                   None if optimizer is None else
                   tuple(len(group["params"]) for group in optimizer["param_groups"]))

    def differences(self, other: StateLayout, names: tuple[str, str]) -> list[str]:
        """How ``other`` differs from this layout, each side called by its entry of ``names``
        (this one's first)."""
        ours, theirs = names
        found = []
        reshaped = [f"{key}: {self.shapes[key]} {ours}, {other.shapes[key]} {theirs}"
                    for key in self.shapes.keys() & other.shapes.keys()
                    if self.shapes[key] != other.shapes[key]]
        if reshaped:
            found.append(f"{len(reshaped)} weight(s) of another shape ({_first(sorted(reshaped))})")
        for keys, where, absent in ((self.shapes.keys() - other.shapes.keys(), ours, theirs),
                                    (other.shapes.keys() - self.shapes.keys(), theirs, ours)):
            if keys:
                found.append(f"{len(keys)} weight(s) {where} that are not {absent} "
                             f"({_first(sorted(keys))})")
        if None not in (self.group_sizes, other.group_sizes) and (
                self.group_sizes != other.group_sizes):
            found.append(f"the optimizer's parameter groups: {len(self.group_sizes)} of "
                         f"{list(self.group_sizes)} parameters {ours}, {len(other.group_sizes)} of "
                         f"{list(other.group_sizes)} {theirs}")
        return found


class SafeCheckpointer(DetectionCheckpointer):
    """Detectron2's DetectionCheckpointer with atomic, finite-only saving and safe loading.

    Made to save into a folder, it first removes what interrupted saves left there
    (:func:`remove_interrupted_saves`)."""

    def __init__(self, model, save_dir: str = "", *, check_weights: bool = False, **kwargs):
        """``check_weights``: for evaluation and inference, :meth:`load` raises
        :class:`UnusableWeightsError` unless the file sets every weight of the model (none
        missing, none of another shape) and all loaded weights are finite."""
        super().__init__(model, save_dir, **kwargs)
        self.check_weights = check_weights
        self._incompatible = None
        if self.save_dir and self.save_to_disk and os.path.isdir(self.save_dir):
            remove_interrupted_saves(self.save_dir)

    def load(self, path: str, checkpointables: list[str] | None = None) -> dict:
        if self.check_weights and not path:
            raise UnusableWeightsError(
                "no weights given (MODEL.WEIGHTS is empty): the model would predict with its "
                f"random initial weights. {_OVERRIDE_HINT}")
        if path and "://" not in path and not os.path.isfile(path):
            # fvcore's own message is a bare "Checkpoint ... not found!" assertion.
            raise FileNotFoundError(
                f"MODEL.WEIGHTS is {path}, which does not exist. If it is the pretrained backbone "
                "that a small config names, make it first with `python -m mask_rcnn_ext.pretrain "
                "--config-file CONFIG` (same config); to train from random weights instead, set "
                'MODEL.WEIGHTS "" (in a LazyConfig: train.init_checkpoint="").')
        self._incompatible = None
        loaded = super().load(path, checkpointables)
        if self.check_weights:
            self._check_loaded(path)
        return loaded

    def _load_model(self, checkpoint: dict):
        self._incompatible = super()._load_model(checkpoint)
        return self._incompatible

    def _check_loaded(self, path: str) -> None:
        problems = []
        if self._incompatible is not None:
            shapes = self._incompatible.incorrect_shapes
            # fvcore lists the keys it skipped for their shape as missing too.
            mis_shaped = {key for key, _, _ in shapes}
            missing = [key for key in self._incompatible.missing_keys if key not in mis_shaped]
            if missing:
                problems.append(f"{len(missing)} weight(s) of the model are not in it "
                                f"({_first(missing)})")
            if shapes:
                problems.append(f"{len(shapes)} weight(s) have another shape in it than in the "
                                "model ("
                                + _first([f"{key}: {tuple(file)} in the file, {tuple(model)} in "
                                          "the model" for key, file, model in shapes]) + ")")
        non_finite = [key for key, tensor in self.model.state_dict().items()
                      if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
        if non_finite:
            problems.append(f"{len(non_finite)} weight(s) hold NaN or Inf ({_first(non_finite)})")
        if problems:
            raise UnusableWeightsError(
                f"{path} does not fit this model: {'; '.join(problems)}. Predictions would come "
                "from random or broken weights; check MODEL.WEIGHTS and the config (e.g. "
                f"MODEL.ROI_HEADS.NUM_CLASSES, the heads' names). {_OVERRIDE_HINT}")

    def save(self, name: str, **kwargs) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        path = os.path.join(self.save_dir, f"{name}.pth")
        model_state = self.model.state_dict()
        for key, tensor in model_state.items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise FloatingPointError(
                    f"not saving {path}: model weight {key!r} holds NaN or Inf (training "
                    "diverged); the previous checkpoint in this folder is kept")
        data = {"model": model_state}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
        data.update(kwargs)
        self.logger.info(f"Saving checkpoint to {path}")
        try:
            write_checkpoint(path, data)
            self.tag_last_checkpoint(os.path.basename(path))
        except (OSError, RuntimeError) as error:
            cause = _os_error_in(error) or error
            raise CheckpointSaveError(
                f"could not save checkpoint {path}: {cause}. The checkpoints saved before it are "
                f"unchanged. {self.resume_hint()}"
                + (" once that is fixed." if self.has_checkpoint() else "")) from error

    def resume_hint(self) -> str:
        """Which checkpoint of the folder a run that stopped now would ``--resume`` from."""
        if not self.has_checkpoint():
            return "No checkpoint was saved before it."
        return (f"The last good checkpoint is {self.get_checkpoint_file()}; `--resume` "
                "continues from it")

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        with atomic_write(os.path.join(self.save_dir, "last_checkpoint"), "w") as stream:
            stream.write(last_filename_basename)

    def _load_file(self, filename: str) -> dict:
        try:
            with PathManager.open(filename, "rb") as stream:
                if filename.endswith(".pkl"):
                    return _interpret_pickled_weights(load_pickled_arrays(stream))
                with torch.serialization.safe_globals(_TORCH_ARRAY_GLOBALS):
                    loaded = torch.load(stream, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            # torch's message is long; its line naming the object is the one that matters.
            reason = next((line.strip() for line in str(error).splitlines()
                           if "GLOBAL" in line or "Can only build" in line),
                          str(error))
            raise UnsafeCheckpointError(
                f"refusing to load {filename}: {reason}. Loading it could run code from the file; "
                "if you trust its source, load it yourself and save its tensors with torch.save."
            ) from error
        if filename.endswith(".pyth"):  # pycls (ImageNet) checkpoints
            state = {key: value for key, value in loaded["model_state"].items()
                     if not key.endswith("num_batches_tracked")}
            return {"model": state, "__author__": "pycls", "matching_heuristics": True}
        return loaded if "model" in loaded else {"model": loaded}


def _interpret_pickled_weights(data: dict) -> dict:
    """The checkpoint dict for the two ``.pkl`` layouts Detectron2 reads: its own model zoo
    (``model`` and ``__author__`` keys) and Caffe2/Detectron1 blobs, whose names Detectron2's
    checkpointer converts by its matching heuristics."""
    if "model" in data and "__author__" in data:
        return data
    blobs = data.get("blobs", data)  # detection models keep their weights under "blobs"
    weights = {key: value for key, value in blobs.items() if not key.endswith("_momentum")}
    return {"model": weights, "__author__": "Caffe2", "matching_heuristics": True}

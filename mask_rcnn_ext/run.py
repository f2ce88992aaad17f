"""A training or evaluation run's set-up (``train_net.py``'s): Detectron2's ``default_setup``
(logging to ``log.txt``, ``config.yaml``, seeds) with the run's output folder guarded, so that
nothing an earlier or a concurrent run wrote there is lost.

- The folder is locked for the life of the run's main process (``flock`` on its ``.run.lock``,
  released by the kernel when the process ends, however it ends): a second run there, training or
  evaluating, is refused at once, naming the folder and the process that holds it.
- A new training (no ``--resume``) is refused in a folder that holds another run's checkpoints
  (``last_checkpoint``, ``model_*.pth``) or metrics (``metrics.json``): it would overwrite the
  first and append to the second.
- ``--resume`` compares the config with the run before any state is loaded: when the model's
  weights or the optimizer's parameter groups would not fit the run's last checkpoint, that is an
  error naming the changed keys (Detectron2 would skip the weights and fail in the optimizer);
  other changes are logged. The run's ``config.yaml`` is kept as it was, as it is for
  ``--eval-only`` in a run's folder: it describes the run's checkpoints.
- mask_rcnn_ext's own log lines (the counts of dropped annotations and skipped images, ...) go to
  ``log.txt`` as Detectron2's do.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import tempfile
import time
from pathlib import Path
from unittest import mock

import yaml
from detectron2.config import CfgNode, LazyConfig
from detectron2.engine import default_setup
from detectron2.engine import defaults as detectron2_defaults
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from .checkpoint import StateLayout

__all__ = ["ExistingRunError", "IncompatibleResumeError", "OutputDirInUseError", "setup_run"]

# Files that show that a training has run in a folder.
_CHECKPOINTS = ("last_checkpoint", "model_*.pth")
_METRICS = "metrics.json"
_LOCK = ".run.lock"
# The run's config.yaml while Detectron2's default_setup writes the new one (which it would put
# in its place); a set-up killed meanwhile leaves it, and the next one puts it back.
_SET_ASIDE = ".config.yaml.run"


class OutputDirInUseError(RuntimeError):
    """Another process runs in the output folder."""


class ExistingRunError(RuntimeError):
    """A new training would overwrite another run's files."""


class IncompatibleResumeError(ValueError):
    """``--resume`` with a config whose training state does not fit the run's checkpoint."""


# Output folders locked by this process: held until it ends (a process may set up several runs
# in one folder, one after the other, e.g. training then evaluating).
_held_locks: dict[str, int] = {}


def _lock(folder: Path, key: str) -> None:
    """Hold ``folder``'s lock for the life of this process, or raise OutputDirInUseError."""
    real = os.path.realpath(folder)
    if real in _held_locks:
        return
    folder.mkdir(parents=True, exist_ok=True)
    handle = os.open(folder / _LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(handle, 1024).decode(errors="replace").strip() or "another process"
        os.close(handle)
        raise OutputDirInUseError(
            f"{key} {folder} is in use by {holder}: two runs in one folder overwrite each "
            f"other's checkpoints and mix their metrics. Wait for it to end, or give this run "
            f"another {key}.") from None
    os.ftruncate(handle, 0)
    os.write(handle, f"process {os.getpid()} on {socket.gethostname()}, since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
    _held_locks[real] = handle


def _last_checkpoint(folder: Path) -> Path | None:
    """The checkpoint that ``--resume`` would load from ``folder``, if any."""
    tag = folder / "last_checkpoint"
    if not tag.is_file():
        return None
    path = folder / tag.read_text().strip()
    return path if path.is_file() else None


def _refuse_another_run(folder: Path, key: str) -> None:
    found = sorted({path.name for pattern in (*_CHECKPOINTS, _METRICS)
                    for path in folder.glob(pattern)})
    if found:
        listed = ", ".join(found[:4]) + (f", ... ({len(found) - 4} more)" if len(found) > 4
                                         else "")
        raise ExistingRunError(
            f"{key} {folder} holds another run's files ({listed}): a new training there would "
            f"overwrite its checkpoints and mix its metrics with this run's. To continue that run, "
            f"add --resume; to start a new one, give another {key} (or move that run's files "
            "away yourself).")


def _config_text(cfg) -> str:
    """``cfg`` as Detectron2's default_setup writes it to ``config.yaml``."""
    if isinstance(cfg, CfgNode):
        return cfg.dump()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "config.yaml")
        LazyConfig.save(cfg, path)
        return Path(path).read_text()


def _flat(tree, prefix: str = "") -> dict[str, object]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat = {}
    for key, value in tree.items():
        flat.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _config_changes(run_config: Path, cfg) -> list[str] | None:
    """``KEY: run's value -> this value`` for each key that differs between the run's
    ``config.yaml`` and ``cfg``; None when the run's file is missing or unreadable."""
    try:
        before = _flat(yaml.safe_load(run_config.read_text()))
    except (OSError, yaml.YAMLError):
        return None
    now = _flat(yaml.safe_load(_config_text(cfg)))
    missing = "(not set)"
    return [f"{key}: {before.get(key, missing)!r} -> {now.get(key, missing)!r}"
            for key in sorted(before.keys() | now.keys()) if before.get(key) != now.get(key)]


def _check_resume(cfg, folder: Path, checkpoint: Path, trainer_class) -> str | None:
    """Raise IncompatibleResumeError if ``cfg``'s training state does not fit ``checkpoint``;
    else return what to log of how the config differs from the run's (None if it does not)."""
    run_config = folder / _SET_ASIDE
    if not run_config.is_file():
        run_config = folder / "config.yaml"
    changes = _config_changes(run_config, cfg)
    described = ("; ".join(changes[:20]) + (f"; and {len(changes) - 20} more"
                                            if len(changes) > 20 else "") if changes
                 else "none" if changes is not None else f"unknown ({run_config} is missing)")
    differences = StateLayout.of_checkpoint(str(checkpoint)).differences(
        trainer_class.state_layout(cfg), ("in the checkpoint", "in this config's model"))
    if differences:
        raise IncompatibleResumeError(
            f"--resume {folder}: this config's training state does not fit the run's last "
            f"checkpoint {checkpoint}: {'; '.join(differences)}. Keys changed since the run "
            f"started (its config.yaml -> now): {described}. Resume with the run's own settings, "
            f"or start a new run in another {trainer_class.output_dir_key}.")
    if not changes:
        return None
    return (f"--resume {folder} with settings that differ from the run's config.yaml, which is "
            f"kept as it was: {described}")


@contextlib.contextmanager
def _keeping_config(folder: Path):
    """While active, ``folder/config.yaml`` is set aside (renamed, never rewritten), and put back
    afterwards over whatever was written in its place."""
    config, aside = folder / "config.yaml", folder / _SET_ASIDE
    if not aside.exists() and config.exists():
        os.replace(config, aside)
    try:
        yield
    finally:
        if aside.exists():
            os.replace(aside, config)


def _plain_configs():
    """While in the block, Detectron2's default_setup logs the config file and the full config
    as they are. It colours them with pygments (whenever installed, as pytest and IPython
    install it) for a terminal, and the same text went to log.txt: ANSI escape codes in every
    line of a file that is read with an editor, grep or a browser."""
    return mock.patch.object(detectron2_defaults, "_highlight", lambda code, filename: code)


def setup_run(cfg, args, trainer_class) -> None:
    """Detectron2's ``default_setup(cfg, args)`` for a run of ``trainer_class``
    (:class:`~mask_rcnn_ext.engine.Trainer` or ``LazyTrainer``), with its output folder guarded
    as this module says. The checks run on the main process before any process writes there."""
    output_dir = trainer_class.output_dir(cfg)
    folder, key = Path(output_dir or "."), trainer_class.output_dir_key
    keep_config, changes = False, None
    if comm.is_main_process() and output_dir:
        _lock(folder, key)
        checkpoint = _last_checkpoint(folder)
        if getattr(args, "eval_only", False):
            keep_config = checkpoint is not None  # the folder is a training run's
        elif not getattr(args, "resume", False):
            _refuse_another_run(folder, key)
        elif checkpoint is not None:
            changes = _check_resume(cfg, folder, checkpoint, trainer_class)
            keep_config = True
    comm.synchronize()
    with _keeping_config(folder) if keep_config else contextlib.nullcontext(), _plain_configs():
        default_setup(cfg, args)
    logger = setup_logger(output_dir, distributed_rank=comm.get_rank(), name="mask_rcnn_ext")
    # Detectron2's setup_logger stops propagation; ours propagate (to no handler when run from
    # train_net.py), so that a notebook's or pytest's handlers on the root logger still see them.
    logger.propagate = True
    if changes:
        logging.getLogger(__name__).warning(changes)

"""Checkpoints that are written atomically.

fvcore's Checkpointer writes ``{name}.pth`` and ``last_checkpoint`` in place, so a process killed
while writing leaves a truncated file behind. :class:`AtomicCheckpointer` writes each to a
temporary file in the same folder, flushes it to disk and renames it over the target: a reader
(``--resume``) sees either the previous complete file or the new complete one.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable

import torch
from detectron2.checkpoint import DetectionCheckpointer

__all__ = ["AtomicCheckpointer"]


def _write_atomically(path: str, write: Callable[[object], None], mode: str) -> None:
    folder = os.path.dirname(path) or "."
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.")
    try:
        with os.fdopen(handle, mode) as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


class AtomicCheckpointer(DetectionCheckpointer):
    """Detectron2's DetectionCheckpointer with atomic writes to local folders."""

    def save(self, name: str, **kwargs) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {path}")
        _write_atomically(path, lambda stream: torch.save(data, stream), "wb")
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        path = os.path.join(self.save_dir, "last_checkpoint")
        _write_atomically(path, lambda stream: stream.write(last_filename_basename), "w")

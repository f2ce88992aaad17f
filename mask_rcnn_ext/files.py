"""Files written atomically: a reader sees the previous complete file or the new complete one,
never a truncated one, whatever happens to the writing process.

:func:`atomic_write` writes to a temporary file in the target's folder, flushes it to disk and
renames it over the target. A write that fails removes its temporary file; one whose process is
killed (SIGKILL, power loss) leaves it behind, and :func:`remove_interrupted_writes` removes such
leftovers later (only names of this module's pattern, and never one that a running write holds).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import secrets
from collections.abc import Iterator
from typing import IO

__all__ = ["atomic_write", "remove_interrupted_writes"]


def _temporary_name(target: str) -> str:
    """The temporary file of a write to ``target``: "." + its name + "." + 8 characters."""
    return f".{target}.{secrets.token_hex(4)}"


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """A stream (opened with ``mode``, "w" or "wb") whose content replaces ``path`` when the block
    ends without an exception; with one, ``path`` is left as it was and nothing else remains.
    The file gets the modes of the umask, as any file the process creates."""
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    while True:
        temporary = os.path.join(folder, _temporary_name(os.path.basename(path)))
        try:
            handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(handle, mode) as stream:
            # Held until the file is renamed: a write in progress is locked, the leftover of a
            # killed one is not (the kernel releases a dead process's locks).
            fcntl.flock(stream.fileno(), fcntl.LOCK_EX)
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
            os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise


def remove_interrupted_writes(folder: str | os.PathLike, targets: str, what: str) -> list[str]:
    """Remove the temporary files that killed :func:`atomic_write` calls left in ``folder`` for
    the targets whose names match the regular expression ``targets``, except those a running write
    holds locked. Logs their names and total size as left by ``what`` (e.g. "checkpoint saves");
    returns their paths."""
    folder = os.fspath(folder)
    pattern = re.compile(rf"^\.(?:{targets})\.[a-z0-9_]{{8}}$")
    removed, total = [], 0
    for name in sorted(os.listdir(folder)):
        if not pattern.match(name):
            continue
        path = os.path.join(folder, name)
        try:
            with open(path, "rb") as stream:
                try:
                    fcntl.flock(stream.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # being written
                total += os.fstat(stream.fileno()).st_size
                os.remove(path)
        except FileNotFoundError:
            continue  # renamed by its write meanwhile
        removed.append(path)
    if removed:
        names = ", ".join(map(os.path.basename, removed))
        logging.getLogger(__name__).warning(
            f"Removed {len(removed)} temporary file(s) ({total / 2**20:.1f} MiB) left in {folder} "
            f"by {what} that were interrupted: {names}")
    return removed

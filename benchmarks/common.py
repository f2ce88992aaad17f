"""What the benchmark scripts share: medians of repeated runs, peak memory, and results files.

Times: each side is measured in the same process, alternating, so that both see the same machine
state. Peak memory: each side runs once in a fresh process (so that memory freed by the other side
or by an earlier run, which the allocator keeps and reuses, does not hide its needs); it is the
highest resident set size (RSS) during that run minus the RSS just before, sampled every
millisecond (on CUDA: torch's peak allocated memory).
"""

from __future__ import annotations

import datetime
import json
import multiprocessing
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as stream:
        return int(stream.read().split()[1]) * _PAGE_BYTES


class PeakMemory:
    """``with PeakMemory(device) as peak: ...``; then ``peak.megabytes`` is the increase."""

    def __init__(self, device: str = "cpu"):
        self.device = device
        self.megabytes = 0.0

    def __enter__(self):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
            return self
        self._start = self._peak = _rss_bytes()
        self._running = True
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()
        return self

    def _sample(self) -> None:
        while self._running:
            self._peak = max(self._peak, _rss_bytes())
            time.sleep(0.001)

    def __exit__(self, *exc) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.megabytes = (torch.cuda.max_memory_allocated() - self._start) / 2**20
            return
        self._running = False
        self._sampler.join()
        self.megabytes = (max(self._peak, _rss_bytes()) - self._start) / 2**20


def _peak_of_first_call(factory: Callable[..., Callable[[], object]], args: tuple,
                        device: str) -> float:
    function = factory(*args)
    with PeakMemory(device) as peak:
        function()
    return peak.megabytes


def peak_memory(factory: Callable[..., Callable[[], object]], *args, device: str = "cpu") -> float:
    """Peak memory (MiB) of one call of ``factory(*args)()`` in a fresh process; ``factory`` must
    be a module-level function (it is sent to the new process by name)."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_peak_of_first_call, (factory, args, device))


def compare(sides: dict[str, Callable[[], object]], repeats: int, device: str = "cpu",
            warmup: int = 1) -> dict[str, dict]:
    """Time each side ``repeats`` times (after ``warmup`` runs), alternating between sides; returns
    per side the median, min and max seconds."""
    def run(function) -> float:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        function()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for function in sides.values():
        for _ in range(warmup):
            function()
    seconds = {name: [] for name in sides}
    for _ in range(repeats):
        for name, function in sides.items():
            seconds[name].append(run(function))
    return {name: {"median_s": statistics.median(times), "min_s": min(times),
                   "max_s": max(times), "repeats": repeats}
            for name, times in seconds.items()}


def environment(device: str = "cpu") -> dict:
    import detectron2

    return {
        "date": datetime.date.today().isoformat(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        # How idle OpenMP threads wait: under a competing process it decides the shared-cores case.
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
        "torch": torch.__version__,
        "detectron2": detectron2.__version__,
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
    }


def write_results(name: str, payload: dict, path: Path | None = None) -> Path:
    path = path or RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def print_table(rows: list[tuple], header: tuple) -> None:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)))

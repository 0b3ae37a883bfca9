"""Background samplers for the HTTP benchmark: GPU utilisation (NVML) and the server process.

NVML comes from ``nvidia-ml-py`` (imported as ``pynvml``); without it, or without a
driver, the sampler reports why instead of a number.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psutil

from benchmarks.common import summarize


class _PeriodicSampler:
    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> None:
        raise NotImplementedError

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "_PeriodicSampler":
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name=type(self).__name__, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


class GpuSampler(_PeriodicSampler):
    """``nvmlDeviceGetUtilizationRates`` (percent of time a kernel ran) and memory used, every interval."""

    def __init__(self, index: int = 0, interval_s: float = 0.1) -> None:
        super().__init__(interval_s)
        self.utilization: list[float] = []
        self.memory_used: list[int] = []
        self.reason: str | None = None
        self.until: float | None = None
        self._nvml: Any = None
        self._handle: Any = None
        try:
            import pynvml  # nvidia-ml-py; optional

            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self._nvml = pynvml
        except ImportError:
            self.reason = "nvidia-ml-py is not installed"
        except Exception as error:  # noqa: BLE001 - NVMLError_*: no driver, no GPU
            self.reason = f"NVML unavailable: {error}"

    @property
    def available(self) -> bool:
        return self._nvml is not None

    def sample(self) -> None:
        if self._nvml is None or (self.until is not None and time.perf_counter() > self.until):
            return
        self.utilization.append(float(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu))
        self.memory_used.append(int(self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used))

    def reset(self, until: float | None = None) -> None:
        """Start a new level; sample only until ``until`` (perf_counter): the window the queue is kept full."""
        self.utilization, self.memory_used = [], []
        self.until = until

    def report(self) -> dict[str, Any]:
        if not self.available:
            return {"available": False, "reason": self.reason}
        stats = summarize(self.utilization)
        return {
            "available": True,
            "interval_s": self.interval_s,
            "samples": stats["n"],
            "mean_percent": stats["mean"],
            "median_percent": stats["median"],
            "max_percent": stats["max"],
            "peak_memory_used_bytes": max(self.memory_used, default=None),
        }

    def close(self) -> None:
        if self._nvml is not None:
            self._nvml.nvmlShutdown()
            self._nvml = None


class ProcessSampler(_PeriodicSampler):
    """RSS and CPU use of the server process (all its threads), when the benchmark started it."""

    def __init__(self, pid: int | None, interval_s: float = 0.25) -> None:
        super().__init__(interval_s)
        self._process = psutil.Process(pid) if pid is not None else None
        self.rss: list[int] = []
        self.cpu_percent: list[float] = []
        if self._process is not None:
            self._process.cpu_percent(None)  # primes the counter; the first reading is meaningless

    def sample(self) -> None:
        if self._process is None:
            return
        try:
            with self._process.oneshot():
                self.rss.append(int(self._process.memory_info().rss))
                self.cpu_percent.append(float(self._process.cpu_percent(None)))
        except psutil.Error:
            self._process = None

    def reset(self) -> None:
        self.rss, self.cpu_percent = [], []
        if self._process is not None:
            self._process.cpu_percent(None)

    def report(self) -> dict[str, Any] | None:
        if not self.rss:
            return None
        return {
            "peak_rss_bytes": max(self.rss),
            # Percent of one core, so 200 = two cores busy.
            "mean_cpu_percent": summarize(self.cpu_percent)["mean"],
        }

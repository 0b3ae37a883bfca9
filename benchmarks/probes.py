"""Per-stage measurements taken from outside the engine, by wrapping each stage.

``ProbedStage`` delegates to a real stage and, around its ``run``, resets and reads the
GPU allocator's peak, the process's resident-memory high-water mark, and (on the one
FLOP-counting job) counts FLOPs with ``torch.utils.flop_counter``. Wall time stays the
engine's own (``JobResult.timings``, CUDA-synchronised), so the engine needs no hook.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from pipeline.runtime import Runtime
from pipeline.stage import Stage, StageContext
from pipeline.state import JobState

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def _sdpa_cpu_flops(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, **kwargs: Any) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# torch has FLOP formulas for the CUDA attention kernels but not for the fused CPU one,
# so on a CPU attention would silently count as zero.
EXTRA_FLOP_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops}


class _GlobalOnly:
    """Stands in for FlopCounterMode's per-module tracker: every FLOP goes to "Global".

    torch's ModuleTracker hooks autograd on module inputs that require grad; under
    ``torch.inference_mode`` a parameter passed as a module's input (as the LRM does with
    its learnt triplane tokens) has no grad_fn and the hook raises. We only need the
    per-op totals, so the tracker is not needed.
    """

    parents = frozenset({"Global"})

    def __enter__(self) -> "_GlobalOnly":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


def flop_counter() -> FlopCounterMode:
    counter = FlopCounterMode(display=False, custom_mapping=EXTRA_FLOP_FORMULAS)
    if hasattr(counter, "mod_tracker"):
        counter.mod_tracker = _GlobalOnly()  # type: ignore[assignment]
    return counter


class HostMemory:
    """Resident set size, and a per-stage high-water mark where Linux lets us reset it."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        self.resettable = self._try_reset()

    def rss(self) -> int:
        return int(self._process.memory_info().rss)

    def _try_reset(self) -> bool:
        try:
            _CLEAR_REFS.write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
            return True
        except OSError:
            return False

    def reset_peak(self) -> None:
        if self.resettable:
            self._try_reset()

    def peak(self) -> int:
        """VmHWM since the last reset, or the current RSS where it cannot be read."""
        if self.resettable:
            for line in _STATUS.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return self.rss()


@dataclass
class StageSample:
    peak_gpu_bytes: int | None
    peak_rss_bytes: int
    flops: int | None = None
    flops_by_op: dict[str, int] = field(default_factory=dict)


class StageProbe:
    """Collects one ``StageSample`` per stage of the job being run."""

    def __init__(self) -> None:
        self.host = HostMemory()
        self.count_flops = False
        self.samples: dict[str, StageSample] = {}

    def start_job(self, *, count_flops: bool) -> None:
        self.count_flops = count_flops
        self.samples = {}

    def measure(self, name: str, runtime: Runtime, run: Any) -> None:
        """Call ``run()`` with this stage's peaks reset before and read after."""
        cuda = runtime.is_cuda
        if cuda:
            torch.cuda.reset_peak_memory_stats(runtime.device)
        self.host.reset_peak()
        with ExitStack() as stack:
            counter = stack.enter_context(flop_counter()) if self.count_flops else None
            run()
        self.samples[name] = StageSample(
            peak_gpu_bytes=int(torch.cuda.max_memory_allocated(runtime.device)) if cuda else None,
            peak_rss_bytes=self.host.peak(),
        )
        if counter is not None:
            self.samples[name].flops = int(counter.get_total_flops())
            by_op = counter.get_flop_counts().get("Global", {})
            self.samples[name].flops_by_op = {str(op): int(count) for op, count in by_op.items()}


class ProbedStage:
    """A stage that behaves exactly like ``inner`` and reports to ``probe`` around each run."""

    def __init__(self, inner: Stage, probe: StageProbe) -> None:
        self.inner = inner
        self.probe = probe
        self.name = inner.name
        self.progress_weight = inner.progress_weight

    def load(self, runtime: Runtime) -> None:
        self.inner.load(runtime)

    def run(self, job: JobState, ctx: StageContext) -> None:
        self.probe.measure(self.name, ctx.runtime, lambda: self.inner.run(job, ctx))

    def __getattr__(self, attribute: str) -> Any:
        # Anything else the engine or a test reads (e.g. a stage's loaded model) comes from the real stage.
        return getattr(self.inner, attribute)


def probe_stages(stages: list[Stage], probe: StageProbe) -> list[Stage]:
    return [ProbedStage(stage, probe) for stage in stages]  # type: ignore[misc]

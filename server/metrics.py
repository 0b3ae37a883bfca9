"""Prometheus metrics, one registry per app (so tests can build many apps in one process)."""

from __future__ import annotations

from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# Stages run from well under a second (decode) to minutes (multiview on CPU).
STAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 60, 120, 300, 600)
JOB_BUCKETS = (1, 2.5, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1200)


class _JobsByStatus(Collector):
    """Jobs in the store by status, read at scrape time (survives restarts, unlike counters)."""

    def __init__(self, counts: Callable[[], dict[str, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily("lift3d_jobs", "Jobs in the job store by status", labels=["status"])
        for status, count in sorted(self._counts().items()):
            family.add_metric([status], count)
        yield family


def _gpu_memory_bytes(kind: str) -> Callable[[], float]:
    def read() -> float:
        import torch

        if not torch.cuda.is_available():
            return 0.0
        if kind == "allocated":
            return float(torch.cuda.memory_allocated())
        return float(torch.cuda.memory_reserved())

    return read


class Metrics:
    def __init__(self, job_counts: Callable[[], dict[str, int]], queue_depth: Callable[[], int]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_JobsByStatus(job_counts))
        depth = Gauge("lift3d_queue_depth", "Jobs waiting for the GPU worker", registry=self.registry)
        depth.set_function(lambda: float(queue_depth()))
        for kind in ("allocated", "reserved"):
            gauge = Gauge(
                f"lift3d_gpu_memory_{kind}_bytes", f"CUDA memory {kind} by torch (0 without a GPU)", registry=self.registry
            )
            gauge.set_function(_gpu_memory_bytes(kind))
        self.jobs_finished = Counter(
            "lift3d_jobs_finished", "Jobs that ended, by final status", ["status"], registry=self.registry
        )
        self.jobs_rejected = Counter(
            "lift3d_jobs_rejected", "Submissions refused, by error code", ["code"], registry=self.registry
        )
        self.stage_seconds = Histogram(
            "lift3d_stage_duration_seconds", "Wall time per pipeline stage", ["stage"],
            buckets=STAGE_BUCKETS, registry=self.registry,
        )
        self.job_seconds = Histogram(
            "lift3d_job_duration_seconds", "Wall time of a job on the worker", buckets=JOB_BUCKETS, registry=self.registry
        )
        self.queue_wait_seconds = Histogram(
            "lift3d_queue_wait_seconds", "Time a job waited in the queue", buckets=JOB_BUCKETS, registry=self.registry
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)

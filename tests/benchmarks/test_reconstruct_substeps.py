"""bench_pipeline reports the reconstruct stage's sub-steps per configuration (NeRF and mesh variants side by side)."""

from __future__ import annotations

from benchmarks import bench_pipeline
from benchmarks.probes import StageSample
from benchmarks.tables import substep_table


def job(total: float, substeps: dict[str, float], model: str) -> bench_pipeline.JobSample:
    return bench_pipeline.JobSample(
        "a.png", 0, total, {"reconstruct": total}, {"reconstruct": StageSample(None, 1)}, substeps, model
    )


def test_substeps_are_summarised_and_tabled_per_configuration() -> None:
    mesh = [
        job(1.0, {"encode": 0.1, "extraction": 0.5}, "instant-mesh-large"),
        job(2.0, {"encode": 0.3, "extraction": 0.7}, "instant-mesh-large"),
    ]
    nerf = [job(1.0, {"encode": 0.2, "marching cubes": 0.4}, "instant-nerf-large")]
    configs = []
    for name, jobs in (("mesh", mesh), ("nerf", nerf)):
        summary = bench_pipeline.summarize_config(["reconstruct"], jobs, None, None)
        configs.append({"config": {"name": name}, **summary})
    assert configs[0]["reconstruct_model"] == "instant-mesh-large"
    assert list(configs[0]["reconstruct_substeps"]) == ["encode", "extraction"]
    assert configs[0]["reconstruct_substeps"]["extraction"]["median"] == 0.6
    rows = [line for line in substep_table({"configs": configs}) if line.startswith("| mesh") or line.startswith("| nerf")]
    assert rows == [
        "| mesh | instant-mesh-large | encode | 200 | 280 |",
        "| mesh | instant-mesh-large | extraction | 600 | 680 |",
        "| nerf | instant-nerf-large | encode | 200 | 200 |",
        "| nerf | instant-nerf-large | marching cubes | 400 | 400 |",
    ]


def test_jobs_without_substeps_give_no_table() -> None:
    summary = bench_pipeline.summarize_config(["reconstruct"], [job(1.0, {}, None)], None, None)
    assert summary["reconstruct_substeps"] == {} and substep_table({"configs": [{"config": {"name": "x"}, **summary}]}) == []

"""Golden check for Zero123++: run every case of a set through our pipeline, compare every tensor.

Everything comes from the set: the model folder (``model_dir`` in cases.json), each
case's call parameters, seeds, background and input image, and each tensor's tolerance.
The reference protocol seeds the process RNG (``global_seed``) and passes a CPU
generator (``generator_seed``); our pipeline takes the first stream as an explicit
``reference_generator``, which draws the identical numbers.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from models.golden.compare import CaseReport, TensorCheck, close, exact, levels
from models.zero123plus.components import load_components
from models.zero123plus.pipeline import Zero123PlusPipeline


class Recorder:
    """Collects the pipeline's named intermediates; a name recorded on every step is stacked."""

    def __init__(self) -> None:
        self._values: dict[str, list[np.ndarray]] = defaultdict(list)

    def record(self, name: str, value: torch.Tensor | np.ndarray) -> None:
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        self._values[name].append(np.array(value, copy=True))

    def get(self, name: str) -> np.ndarray | None:
        values = self._values.get(name)
        if not values:
            return None
        return values[0] if len(values) == 1 else np.stack(values)


def compare_tensor(name: str, actual: np.ndarray, expected: torch.Tensor, tolerance: dict[str, Any]) -> list[TensorCheck]:
    """Apply one cases.json tolerance: exact, uint8 levels, atol/rtol, plus optional per-row bounds."""
    if tolerance.get("exact"):
        return [exact(name, actual, expected)]
    if "max_abs" in tolerance:
        return [
            levels(
                name,
                actual,
                expected,
                max_abs=int(tolerance["max_abs"]),
                max_fraction=float(tolerance.get("max_fraction_differing", 0.0)),
            )
        ]
    checks = [close(name, actual, expected, atol=float(tolerance["atol"]), rtol=float(tolerance.get("rtol", 0.0)))]
    for row_key, row_tolerance in tolerance.get("per_row", {}).items():
        match = re.match(r"row(\d+)", row_key)
        if match is None:
            raise ValueError(f"cannot read a row index from per_row key {row_key!r}")
        row = int(match.group(1))
        checks.append(
            close(
                f"{name}[{row_key}]",
                actual[row] if actual.ndim else actual,
                expected[row],
                atol=float(row_tolerance["atol"]),
                rtol=float(row_tolerance.get("rtol", 0.0)),
            )
        )
    return checks


def _input_image(case: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Image.Image:
    spec = case["input_image"]
    array = tensors[f"{case['name']}/{spec['tensor']}"].numpy()
    return Image.fromarray(array, spec["mode"])


def run_case(pipeline: Zero123PlusPipeline, case: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Recorder:
    call, seeds = case["call"], case["seeds"]
    if call.get("num_images_per_prompt", 1) != 1:
        raise NotImplementedError("num_images_per_prompt other than 1")
    if call.get("depth_image") is not None:
        raise NotImplementedError("depth ControlNet conditioning")
    generator = None
    if seeds.get("generator_seed") is not None:
        generator = torch.Generator(seeds.get("generator_device", "cpu")).manual_seed(int(seeds["generator_seed"]))
    recorder = Recorder()
    pipeline(
        _input_image(case, tensors),
        num_inference_steps=int(call["num_inference_steps"]),
        guidance_scale=float(call["guidance_scale"]),
        width=int(call["width"]),
        height=int(call["height"]),
        prompt=call.get("prompt", ""),
        background_rgb=tuple(case["background_rgb"]),
        generator=generator,
        reference_generator=torch.Generator("cpu").manual_seed(int(seeds["global_seed"])),
        probe=recorder,
    )
    return recorder


def check_set(set_dir: Path, *, verbose: bool = False) -> list[CaseReport]:
    set_dir = Path(set_dir)
    spec = json.loads((set_dir / "cases.json").read_text())
    if spec.get("device", "cpu") != "cpu" or spec.get("computation_dtype", "float32") != "float32":
        raise NotImplementedError("golden sets are replayed on CPU in float32")
    tensors = load_file(set_dir / spec.get("tensor_file", "cases.safetensors"))
    pipelines: dict[str, Zero123PlusPipeline] = {}
    reports = []
    for case in spec["cases"]:
        model_dir = case.get("model_dir", spec.get("model_dir", "config"))
        if model_dir not in pipelines:
            pipelines[model_dir] = Zero123PlusPipeline(load_components(set_dir / model_dir, dtype=torch.float32))
        recorder = run_case(pipelines[model_dir], case, tensors)
        report = CaseReport(spec.get("set", set_dir.name), case["name"])
        for name, info in case["tensors"].items():
            if info.get("role") == "input":
                continue
            key = f"{case.get('tensor_prefix', case['name'] + '/')}{name}"
            if key not in tensors:
                continue  # described but not stored: nothing to compare
            actual = recorder.get(name)
            if actual is None:
                report.add(TensorCheck(name, False, float("inf"), "-", "our pipeline did not produce it"))
                continue
            for check in compare_tensor(name, actual, tensors[key], info["tolerance"]):
                report.add(check)
        reports.append(report)
    return reports

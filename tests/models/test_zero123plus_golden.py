"""Zero123++: our pipeline reproduces the reference's recorded tensors (golden sets), and the checker is strict."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.zero123plus.golden import Recorder, check_set, compare_tensor
from tests.support.paths import shared_path


@pytest.mark.shared
def test_public_golden_set_passes_every_case():
    set_dir = shared_path("golden", "zero123plus", "public")
    reports = check_set(set_dir, verbose=False)
    assert reports, "the public set has cases"
    for report in reports:
        failing = [f"{c.name}: {c.max_abs_err:.3g} > {c.tolerance} {c.detail}" for c in report.checks if not c.ok]
        assert report.ok, f"{report.case}: " + "; ".join(failing)
        compared = {check.name for check in report.checks}
        # The reference's random draws, the conditioning and the final image are all compared.
        assert {"noise.ref", "noise.ancestral", "cond_lat", "encoder_hidden_states", "latents.steps"} <= compared
        assert {"decoded", "output_uint8"} <= compared


def test_exact_tolerance_rejects_one_ulp():
    expected = torch.tensor([1.0, 2.0])
    actual = np.nextafter(expected.numpy(), 3.0)
    (check,) = compare_tensor("x", actual, expected, {"exact": True, "atol": 0.0})
    assert not check.ok


def test_atol_and_per_row_bounds_apply_separately():
    expected = torch.zeros(2, 3)
    actual = np.zeros((2, 3), dtype=np.float32)
    actual[1, 0] = 0.005  # inside the overall atol, outside row 1's bound
    tolerance = {"atol": 0.01, "rtol": 0.0, "per_row": {"row0_a": {"atol": 0.01}, "row1_b": {"atol": 0.001}}}
    checks = compare_tensor("cond_lat", actual, expected, tolerance)
    assert [check.ok for check in checks] == [True, True, False]
    assert checks[2].name == "cond_lat[row1_b]"


def test_uint8_rule_counts_levels_and_fraction():
    expected = torch.zeros(100, 10, dtype=torch.uint8)
    rule = {"max_abs": 1, "max_fraction_differing": 0.001}
    one_off = expected.numpy().copy()
    one_off[0, 0] = 1  # 1 of 1000 values differ by one level: allowed
    assert compare_tensor("img", one_off, expected, rule)[0].ok
    two_values = one_off.copy()
    two_values[5, 5] = 1  # 0.2 % differ: too many
    assert not compare_tensor("img", two_values, expected, rule)[0].ok
    two_levels = expected.numpy().copy()
    two_levels[0, 0] = 2  # one value, two levels off
    assert not compare_tensor("img", two_levels, expected, rule)[0].ok


def test_shape_mismatch_fails():
    (check,) = compare_tensor("x", np.zeros((2, 2)), torch.zeros(2, 3), {"atol": 1.0})
    assert not check.ok


def test_recorder_stacks_per_step_values():
    recorder = Recorder()
    for step in range(3):
        recorder.record("noise.ref", torch.full((2,), float(step)))
    recorder.record("cond_lat", torch.ones(2))
    assert recorder.get("noise.ref").shape == (3, 2)
    assert recorder.get("cond_lat").shape == (2,)
    assert recorder.get("absent") is None

"""Tensor comparison against recorded golden values, with the set's own tolerances."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class TensorCheck:
    name: str
    ok: bool
    max_abs_err: float
    tolerance: str
    detail: str = ""


@dataclass
class CaseReport:
    set_name: str
    case: str
    checks: list[TensorCheck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(check.ok for check in self.checks)

    def worst(self) -> TensorCheck | None:
        failing = [check for check in self.checks if not check.ok]
        pool = failing or self.checks
        return max(pool, key=lambda check: check.max_abs_err) if pool else None

    def add(self, check: TensorCheck) -> TensorCheck:
        self.checks.append(check)
        return check


def _as_numpy(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def close(name: str, actual, expected, *, atol: float, rtol: float = 0.0) -> TensorCheck:
    """|a - e| <= atol + rtol * |e| element-wise (numpy's allclose rule), shapes equal."""
    a = _as_numpy(actual).astype(np.float64)
    e = _as_numpy(expected).astype(np.float64)
    tolerance = f"atol={atol:g}" + (f" rtol={rtol:g}" if rtol else "")
    if a.shape != e.shape:
        return TensorCheck(name, False, float("inf"), tolerance, f"shape {a.shape} != {e.shape}")
    diff = np.abs(a - e)
    max_err = float(diff.max()) if diff.size else 0.0
    ok = bool(np.all(diff <= atol + rtol * np.abs(e))) and bool(np.all(np.isfinite(a)))
    return TensorCheck(name, ok, max_err, tolerance)


def relative(name: str, actual, expected, *, rtol: float) -> TensorCheck:
    """max |a - e| / |e| <= rtol, for outputs spanning orders of magnitude (exp densities); shapes equal.

    ``max_abs_err`` reports that maximum relative error. Where e is 0 only a equal to 0 passes.
    """
    a = _as_numpy(actual).astype(np.float64)
    e = _as_numpy(expected).astype(np.float64)
    tolerance = f"max rel={rtol:g}"
    if a.shape != e.shape:
        return TensorCheck(name, False, float("inf"), tolerance, f"shape {a.shape} != {e.shape}")
    diff = np.abs(a - e)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(diff == 0, 0.0, diff / np.abs(e))
    worst = float(ratio.max()) if ratio.size else 0.0
    ok = bool(np.all(np.isfinite(a))) and worst <= rtol
    return TensorCheck(name, ok, worst, tolerance)


def exact(name: str, actual, expected) -> TensorCheck:
    a = _as_numpy(actual)
    e = _as_numpy(expected)
    if a.shape != e.shape:
        return TensorCheck(name, False, float("inf"), "exact", f"shape {a.shape} != {e.shape}")
    diff = np.abs(a.astype(np.float64) - e.astype(np.float64))
    max_err = float(diff.max()) if diff.size else 0.0
    return TensorCheck(name, max_err == 0.0, max_err, "exact")


def levels(name: str, actual, expected, *, max_abs: int, max_fraction: float) -> TensorCheck:
    """Quantised tensors: each value within ``max_abs`` levels, and at most ``max_fraction`` differing."""
    a = _as_numpy(actual).astype(np.int64)
    e = _as_numpy(expected).astype(np.int64)
    tolerance = f"max_abs={max_abs} frac<={max_fraction:g}"
    if a.shape != e.shape:
        return TensorCheck(name, False, float("inf"), tolerance, f"shape {a.shape} != {e.shape}")
    diff = np.abs(a - e)
    fraction = float((diff > 0).mean()) if diff.size else 0.0
    max_err = float(diff.max()) if diff.size else 0.0
    ok = max_err <= max_abs and fraction <= max_fraction
    return TensorCheck(name, ok, max_err, tolerance, f"differing fraction {fraction:.2e}")

"""sRGB transfer function (IEC 61966-2-1), as glTF's vertex colours must be linear."""

from __future__ import annotations

import numpy as np


def srgb_to_linear(srgb: np.ndarray) -> np.ndarray:
    srgb = np.clip(np.asarray(srgb, np.float32), 0.0, 1.0)
    return np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4).astype(np.float32)


"""What flows between stages, and what a finished job returns.

Everything here lives in memory only: no stage writes an image to disk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from pipeline.options import ResolvedOptions
from pipeline.wipe import wipe

# Keys of ``JobState.previews`` (PNG bytes made only when the job asks for them).
VIEWS_PREVIEW = "views"
CUTOUT_PREVIEW = "cutout"

# points [N, 3] float32 in the reconstruction frame -> sRGB-encoded colours [N, 3] float32 in [0, 1]
ColorQuery = Callable[[np.ndarray], np.ndarray]


@dataclass
class ReconstructedMesh:
    """A mesh in the reconstruction frame (InstantMesh world: +z up, the input view looks from +x).

    Colours are sRGB-encoded, as the views they were learnt from; the finishing stage
    converts to linear where glTF wants linear.
    """

    vertices: np.ndarray  # [N, 3] float32
    faces: np.ndarray  # [F, 3] int64
    vertex_colors: np.ndarray  # [N, 3] float32, sRGB in [0, 1]
    color_query: ColorQuery
    iso_level: float = 0.0
    iso_rule: str = ""  # how the iso-level was chosen ("threshold" or "quantile q")


@dataclass
class JobState:
    """Mutable per-job scratchpad handed from stage to stage.

    Each stage declares the fields it reads and writes (``Stage.reads``/``Stage.writes``);
    docs/architecture.md has the table, and ``Engine(check_contracts=True)`` enforces it.
    """

    options: ResolvedOptions
    input_bytes: bytes | None = None
    image: Any = None  # PIL.Image, upright, RGB or RGBA
    cutout: Any = None  # PIL.Image RGBA, square, object at the foreground ratio
    views: Any = None  # torch.Tensor [6, 3, 320, 320] in [0, 1]
    views_grid: Any = None  # PIL.Image RGB, 3 rows x 2 columns
    mesh: ReconstructedMesh | None = None
    glb: bytes | None = None
    qa: dict[str, Any] = field(default_factory=dict)
    previews: dict[str, bytes] = field(default_factory=dict)  # PNG bytes, only when asked
    metadata: dict[str, Any] = field(default_factory=dict)

    def drop_inputs(self) -> None:
        """Forget the upload and every intermediate image (privacy promise), zeroing what can be zeroed in place."""
        for value in (self.input_bytes, self.image, self.cutout, self.views, self.views_grid):
            wipe(value)
        self.input_bytes = None
        self.image = None
        self.cutout = None
        self.views = None
        self.views_grid = None
        self.mesh = None


@dataclass(frozen=True)
class JobResult:
    glb: bytes
    options: ResolvedOptions
    timings: dict[str, float]  # seconds per stage, CUDA-synchronised
    qa: dict[str, Any]
    previews: dict[str, bytes]
    weights_mode: str
    metadata: dict[str, Any]

    @property
    def seed(self) -> int:
        return self.options.seed

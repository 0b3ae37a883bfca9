"""The InstantMesh reconstruction models: views + cameras -> triplanes -> a field.

Both variants share the camera-modulated encoder and the triplane transformer
(``TriplaneLRM``); they differ in the field read from the planes: density and colour
for the NeRF variant (``InstantNeRF``), sdf, deformation, FlexiCubes weights and colour
for the mesh variant (``InstantMesh``).
"""

from __future__ import annotations

import torch
from torch import nn

from models.instantmesh.config import LRMConfig
from models.instantmesh.encoder import CameraModulatedEncoder
from models.instantmesh.mesh_synthesizer import MeshSynthesizer
from models.instantmesh.synthesizer import DEFAULT_POINTS_CHUNK, TriplaneSynthesizer
from models.instantmesh.transformer import TriplaneTransformer
from models.isosurface.flexicubes import CubeWeights, flexicubes, regular_grid

FLEXICUBES_WEIGHT_SCALE = 0.5  # the reference's FlexiCubes setting for InstantMesh


class TriplaneLRM(nn.Module):
    """Encoder + triplane transformer; subclasses add ``synthesizer``."""

    def __init__(self, config: LRMConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = CameraModulatedEncoder(config)
        self.transformer = TriplaneTransformer(config)

    def encode(self, images: torch.Tensor, cameras: torch.Tensor) -> torch.Tensor:
        """images [B, V, 3, H, W] in [0, 1], cameras [B, V, 16] -> tokens [B*V, 1 + N, D], rows batch-major."""
        if images.ndim != 5 or cameras.ndim != 3 or images.shape[:2] != cameras.shape[:2]:
            raise ValueError(f"images [B, V, 3, H, W] and cameras [B, V, 16] expected, got {tuple(images.shape)} and {tuple(cameras.shape)}")
        return self.encoder(images.flatten(0, 1), cameras.flatten(0, 1))

    def planes_from_tokens(self, tokens: torch.Tensor, batch: int) -> torch.Tensor:
        # Views are concatenated in order, each with its CLS token, as one cross-attention context.
        context = tokens.reshape(batch, -1, tokens.shape[-1])
        return self.transformer(context)

    def forward_planes(self, images: torch.Tensor, cameras: torch.Tensor) -> torch.Tensor:
        """-> triplanes [B, 3, C, 2L, 2L]."""
        return self.planes_from_tokens(self.encode(images, cameras), images.shape[0])

    forward = forward_planes


class InstantNeRF(TriplaneLRM):
    def __init__(self, config: LRMConfig) -> None:
        super().__init__(config)
        self.synthesizer = TriplaneSynthesizer(config.triplane_dim)


class InstantMesh(TriplaneLRM):
    """The FlexiCubes variant. Its grid (``grid_res`` cubes per axis over ``grid_scale``) is
    a plain attribute built per device, not state: the checkpoint holds no buffers."""

    def __init__(self, config: LRMConfig) -> None:
        super().__init__(config)
        self.synthesizer = MeshSynthesizer(config.triplane_dim)
        self._grids: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def flexicubes_grid(self, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """Undeformed grid vertices [(G+1)^3, 3] and cubes [G^3, 8] on ``device``."""
        key = str(torch.device(device))
        if key not in self._grids:
            self._grids[key] = regular_grid(self.config.grid_res, self.config.grid_scale, device)
        return self._grids[key]

    def surface(
        self,
        planes: torch.Tensor,
        sdf: torch.Tensor,
        deformation: torch.Tensor,
        *,
        chunk: int = DEFAULT_POINTS_CHUNK,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One item's grid sdf [N] and deformation [N, 3] -> FlexiCubes mesh vertices [M, 3], faces [T, 3].

        The weight head only runs on the cubes the surface passes through; the others'
        weights never reach the extraction.
        """
        vertices, cubes = self.flexicubes_grid(planes.device)
        inside = (sdf < 0)[cubes].sum(dim=1)
        surface = torch.nonzero((inside > 0) & (inside < 8)).squeeze(1)
        raw = torch.zeros(cubes.shape[0], 21, device=planes.device, dtype=torch.float32)
        raw[surface] = self.synthesizer.cube_weights(planes[:1], vertices, cubes[surface], chunk=chunk)[0].float()
        weights = CubeWeights.from_raw(raw, FLEXICUBES_WEIGHT_SCALE)
        return flexicubes(vertices + deformation, sdf, cubes, weights, self.config.grid_res)

"""InstantMesh reconstruction models (NeRF and FlexiCubes mesh variants), re-implemented to load the real checkpoints unchanged."""

from models.instantmesh.cameras import zero123plus_cameras
from models.instantmesh.config import LRMConfig, ViTConfig
from models.instantmesh.loading import LoadReport, build_empty, build_random, load_for_mode, load_pretrained
from models.instantmesh.lrm import InstantMesh, InstantNeRF, TriplaneLRM

__all__ = [
    "InstantMesh",
    "InstantNeRF",
    "TriplaneLRM",
    "LRMConfig",
    "LoadReport",
    "ViTConfig",
    "build_empty",
    "build_random",
    "load_for_mode",
    "load_pretrained",
    "zero123plus_cameras",
]

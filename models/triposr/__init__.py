"""TripoSR single-image reconstruction (MIT code and weights), re-implemented to load the released checkpoint unchanged."""

from models.triposr.config import TripoSRConfig
from models.triposr.field import FieldSample, TriplaneNeRFField
from models.triposr.loading import build_empty, build_random, checkpoint_path, load_for_mode, load_pretrained
from models.triposr.mesh import TriplaneMesh, extract_mesh
from models.triposr.model import TripoSR
from models.triposr.preprocess import composite_on_gray, conditioning_images, frame_foreground, prepare_rgba
from models.triposr.render import render_views

__all__ = [
    "FieldSample",
    "TriplaneMesh",
    "TriplaneNeRFField",
    "TripoSR",
    "TripoSRConfig",
    "build_empty",
    "build_random",
    "checkpoint_path",
    "composite_on_gray",
    "conditioning_images",
    "extract_mesh",
    "frame_foreground",
    "load_for_mode",
    "load_pretrained",
    "prepare_rgba",
    "render_views",
]

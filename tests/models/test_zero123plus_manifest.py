"""The full-size (dummy) build has exactly the real Zero123++ v1.2 checkpoints' keys and shapes."""

from __future__ import annotations

import json

import pytest

from models.zero123plus.components import FULL_CONFIG_DIR, build_random_components
from tests.support.paths import shared_path

# transformers 5 builds CLIPTextModel without the checkpoint's "text_model." level
# (and strips it on load); the manifest, like the real file, names keys with it.
CHECKPOINT_PREFIX = {"text_encoder": "text_model."}


@pytest.mark.shared
def test_full_size_state_dicts_equal_the_manifest():
    manifest = json.loads(shared_path("golden", "zero123plus", "manifest_full.json").read_text())["components"]
    components = build_random_components(FULL_CONFIG_DIR, device="meta", seed=None)
    models = components.models()
    assert set(models) == set(manifest)
    for name, model in models.items():
        prefix = CHECKPOINT_PREFIX.get(name, "")
        ours = [[prefix + key, list(tensor.shape)] for key, tensor in model.state_dict().items()]
        expected = manifest[name]["state_dict"]
        missing = {key for key, _ in expected} - {key for key, _ in ours}
        extra = {key for key, _ in ours} - {key for key, _ in expected}
        assert not missing and not extra, f"{name}: missing {sorted(missing)[:5]}, extra {sorted(extra)[:5]}"
        assert ours == expected, f"{name}: shapes or order differ"
        assert sum(tensor.numel() for tensor in model.state_dict().values()) == manifest[name]["num_parameters"]
        # position_ids buffers are not persistent: a real file that carries them is loaded without them.
        assert not any(key.endswith("position_ids") for key, _ in ours)

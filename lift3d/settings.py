"""The one settings object.

Every tunable lives here, grouped by who reads it. It is built once (from the
environment, then CLI flags) and injected: nothing else reads ``os.environ``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

WeightsMode = Literal["locked", "dummy", "tiny"]
DeviceChoice = Literal["auto", "cpu", "cuda"]
DtypeChoice = Literal["auto", "float32", "bfloat16", "float16"]
BackgroundMode = Literal["auto", "on", "off"]
TextureMode = Literal["uv", "vertex"]
# A job's pipeline: "multiview" (Zero123++ -> InstantMesh; CC-BY-NC parts) or "fast" (TripoSR; MIT).
PipelineName = Literal["multiview", "fast"]
# What a server loads (docs/profiles.md): each profile names its pipelines, default first.
ServerProfile = Literal["fast", "quality", "all"]
PROFILE_PIPELINES: dict[str, tuple[PipelineName, ...]] = {
    "fast": ("fast",),
    "quality": ("multiview",),
    "all": ("multiview", "fast"),
}
# InstantMesh reconstruction models: the NeRF variants and the FlexiCubes (mesh) variants.
ReconstructModel = Literal["instant-nerf-base", "instant-nerf-large", "instant-mesh-base", "instant-mesh-large"]


class DecodeSettings(msgspec.Struct, frozen=True, kw_only=True):
    max_upload_bytes: int = 20_000_000
    max_pixels: int = 4096 * 4096


class BackgroundSettings(msgspec.Struct, frozen=True, kw_only=True):
    # rembg model name; the file comes from the weights directory, pinned in weights.lock.
    model: str = "u2netp"
    default_mode: BackgroundMode = "auto"
    foreground_ratio: float = 0.85
    output_size: int = 320


class MultiviewSettings(msgspec.Struct, frozen=True, kw_only=True):
    steps: int = 75
    guidance: float = 4.0
    # "instantmesh": white background + the InstantMesh fine-tuned UNet; "official": gray 127.
    variant: Literal["instantmesh", "official"] = "instantmesh"


class ReconstructSettings(msgspec.Struct, frozen=True, kw_only=True):
    # The server default; a job may pick any loaded model (``reconstruct_model`` option).
    model: ReconstructModel = "instant-mesh-large"
    # Loaded beside ``model`` so jobs can choose them; each costs its weights' memory.
    extra_models: tuple[ReconstructModel, ...] = ()
    # Density grid of the NeRF variants (the mesh variants use their own FlexiCubes grid, 128).
    grid_resolution: int = 256
    density_threshold: float = 10.0
    # With random weights (tiny/dummy) the density has no scale: the iso-level is
    # this quantile of the grid instead of the fixed threshold.
    random_weights_iso_quantile: float = 0.7
    color_query_chunk: int = 262_144
    views: Literal[6, 4] = 6
    # The LRM's image encoder and transformer on CUDA: "auto" is bfloat16 where the GPU has
    # it; the triplane field (density and colour queries, so the iso-level) always runs in
    # float32, and on a CPU everything does (golden-exact).
    precision: Literal["auto", "float32", "bfloat16"] = "auto"

    @property
    def loaded_models(self) -> tuple[str, ...]:
        """The default first, then the extras, each once."""
        return tuple(dict.fromkeys((self.model, *self.extra_models)))


class FastSettings(msgspec.Struct, frozen=True, kw_only=True):
    """The ``fast`` pipeline's single-view reconstruction (TripoSR)."""

    grid_resolution: int = 256
    # The reference's marching-cubes density level; with random weights the
    # reconstruct settings' quantile rule applies instead, as in the multiview path.
    density_threshold: float = 25.0
    # TripoSR frames the object itself at this ratio; the cut-out is made at cutout_size
    # so the 512 px conditioning image is not upscaled from the multiview path's 320 px.
    foreground_ratio: float = 0.85
    cutout_size: int = 512
    query_chunk: int = 262_144


class FinishSettings(msgspec.Struct, frozen=True, kw_only=True):
    target_faces: int = 50_000
    texture_size: int = 1024
    texture: TextureMode = "uv"
    # Components smaller than this fraction of the largest (by face count) are debris.
    debris_fraction: float = 0.05
    # Largest extent of the exported model, in metres.
    scale: float = 1.0
    # UV charts: "box" (axis-projected charts packed by xatlas, fast) or "xatlas" (xatlas
    # segments and parameterises too: less distortion, tens of seconds on a small CPU).
    charts: Literal["box", "xatlas"] = "box"
    # zlib level of the texture PNG: 1 encodes a 1024² texture about 3x faster than 6 for a
    # few percent more bytes (benchmarks/results/finish.md).
    png_compression: Annotated[int, msgspec.Meta(ge=0, le=9)] = 1


class EngineSettings(msgspec.Struct, frozen=True, kw_only=True):
    device: DeviceChoice = "auto"
    dtype: DtypeChoice = "auto"
    weights: WeightsMode = "locked"
    weights_dir: str = "~/.cache/lift3d/weights"
    # Which pipelines are loaded (PROFILE_PIPELINES); "quality" is today's multiview-only server.
    profile: ServerProfile = "quality"
    decode: DecodeSettings = msgspec.field(default_factory=DecodeSettings)
    background: BackgroundSettings = msgspec.field(default_factory=BackgroundSettings)
    multiview: MultiviewSettings = msgspec.field(default_factory=MultiviewSettings)
    reconstruct: ReconstructSettings = msgspec.field(default_factory=ReconstructSettings)
    fast: FastSettings = msgspec.field(default_factory=FastSettings)
    finish: FinishSettings = msgspec.field(default_factory=FinishSettings)
    # Overlap jobs across two lanes (pipeline/lanes.py): job N's CPU work runs while job
    # N+1's device stages run. Off: one job at a time through every stage.
    overlap: bool = True
    # Threads for torch's intra-op pool, onnxruntime sessions and OpenMP/BLAS; 0 picks the
    # default share of the cores (lift3d.process.default_cpu_threads); never above the cores.
    cpu_threads: int = 0
    # TF32 matmuls and convolutions on CUDA (float32 work only; no effect on a CPU).
    tf32: bool = True
    # torch.compile the UNet and the LRM (static shapes), compiled during warm-up. Off until a
    # GPU measurement shows its worth.
    compile: bool = False

    @property
    def weights_path(self) -> Path:
        return Path(self.weights_dir).expanduser()

    @property
    def pipelines(self) -> tuple[PipelineName, ...]:
        """The pipelines this profile loads, the default one first."""
        return PROFILE_PIPELINES[self.profile]


class ServerSettings(msgspec.Struct, frozen=True, kw_only=True):
    host: str = "127.0.0.1"
    port: int = 8000
    api_keys: tuple[str, ...] = ()
    queue_size: int = 8
    job_deadline_seconds: float = 600.0
    # A running stage still inside its job this long past the deadline is declared hung (the watchdog).
    watchdog_grace_seconds: float = 30.0
    shutdown_grace_seconds: float = 120.0
    cors_origins: tuple[str, ...] = ()
    sse_keepalive_seconds: float = 15.0
    # HMAC key of the signed job links (base64 or any string); empty: a random one per process,
    # so links do not survive a restart and differ between replicas.
    link_secret: str = ""
    link_ttl_seconds: float = 15 * 60
    # The built-in demo page at /demo (it holds no data and asks for an API key itself).
    demo: bool = True
    # First start on a pod: fetch missing weights before loading (server/weights_gate.py).
    pull_missing: bool = False
    # ...including weights.lock entries not pinned yet (as `lift3d weights pull --allow-unverified`).
    allow_unverified_weights: bool = False
    # URL prefixes the RunPod worker may fetch image_url from even when they resolve to
    # private/loopback addresses (everything public is allowed; see docs/security.md).
    image_url_allowlist: tuple[str, ...] = ()
    # Connection limits (server/limits.py, docs/security.md).
    max_connections: int = 256
    header_timeout_seconds: float = 10.0
    keep_alive_seconds: float = 5.0
    body_idle_timeout_seconds: float = 15.0
    body_timeout_seconds: float = 120.0
    # Bytes of uploads being read at once; 0 = queue_size x max_upload_bytes.
    max_upload_bytes_in_flight: int = 0


class StorageSettings(msgspec.Struct, frozen=True, kw_only=True):
    data_dir: str = "~/.local/share/lift3d"
    default_retention_seconds: int = 24 * 3600
    max_retention_seconds: int = 30 * 24 * 3600
    sweep_interval_seconds: float = 60.0
    # base64 AES-256 keys; the first encrypts, all decrypt (rotation).
    encryption_keys: tuple[str, ...] = ()
    webhook_secret: str = ""
    # Allowed webhook URL prefixes, e.g. "https://app.example.com/hooks/".
    webhook_allowlist: tuple[str, ...] = ()
    webhook_max_attempts: int = 5
    # First retry waits this long, then doubles (capped at webhook_backoff_max_seconds).
    webhook_backoff_seconds: float = 1.0
    webhook_backoff_max_seconds: float = 60.0
    webhook_timeout_seconds: float = 10.0
    # Where results live: "local" (encrypted files in the data dir) or "s3://bucket/prefix"
    # (endpoint, region and credentials from the AWS SDK's own chain; docs/storage.md).
    results: str = "local"
    # S3 only. "client": our AES-256-GCM before upload, downloads through the server;
    # "provider": the provider's SSE (results_sse), and presigned GET URLs in job views and webhooks.
    results_encryption: Literal["client", "provider"] = "client"
    results_sse: Literal["AES256", "aws:kms"] = "AES256"
    results_kms_key_id: str = ""
    results_url_ttl_seconds: int = 900
    # botocore has no environment variable for this one; MinIO on a plain hostname needs "path".
    results_addressing_style: Literal["auto", "path", "virtual"] = "auto"

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser()


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    engine: EngineSettings = msgspec.field(default_factory=EngineSettings)
    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    storage: StorageSettings = msgspec.field(default_factory=StorageSettings)

    def replace(self, **sections: Any) -> "Settings":
        """Copy with whole sections replaced: ``s.replace(engine=...)``."""
        return msgspec.structs.replace(self, **sections)

    def with_overrides(self, overrides: dict[str, Any]) -> "Settings":
        """Apply dotted overrides such as ``{"engine.weights": "tiny"}`` with type checks."""
        tree = msgspec.to_builtins(self)
        for dotted, value in overrides.items():
            node = tree
            *parents, leaf = dotted.split(".")
            for key in parents:
                node = node[key]
            if leaf not in node:
                raise KeyError(f"unknown setting {dotted!r}")
            node[leaf] = value
        return msgspec.convert(tree, Settings, strict=False)


def _flag(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"expected a true/false flag, got {value!r}")


def _split_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


# Environment variable -> (dotted setting, parser). Documented in the README.
ENV_VARS: dict[str, tuple[str, Any]] = {
    "LIFT3D_DEVICE": ("engine.device", str),
    "LIFT3D_DTYPE": ("engine.dtype", str),
    "LIFT3D_WEIGHTS": ("engine.weights", str),
    "LIFT3D_WEIGHTS_DIR": ("engine.weights_dir", str),
    "LIFT3D_PROFILE": ("engine.profile", str),
    "LIFT3D_MAX_UPLOAD_BYTES": ("engine.decode.max_upload_bytes", int),
    "LIFT3D_MAX_PIXELS": ("engine.decode.max_pixels", int),
    "LIFT3D_BACKGROUND_MODEL": ("engine.background.model", str),
    "LIFT3D_STEPS": ("engine.multiview.steps", int),
    "LIFT3D_RECONSTRUCT_MODEL": ("engine.reconstruct.model", str),
    "LIFT3D_RECONSTRUCT_EXTRA_MODELS": ("engine.reconstruct.extra_models", _split_list),
    "LIFT3D_GRID_RESOLUTION": ("engine.reconstruct.grid_resolution", int),
    "LIFT3D_RECONSTRUCT_PRECISION": ("engine.reconstruct.precision", str),
    "LIFT3D_PNG_COMPRESSION": ("engine.finish.png_compression", int),
    "LIFT3D_OVERLAP": ("engine.overlap", _flag),
    "LIFT3D_CPU_THREADS": ("engine.cpu_threads", int),
    "LIFT3D_TF32": ("engine.tf32", _flag),
    "LIFT3D_COMPILE": ("engine.compile", _flag),
    "LIFT3D_FAST_GRID_RESOLUTION": ("engine.fast.grid_resolution", int),
    "LIFT3D_HOST": ("server.host", str),
    "LIFT3D_PORT": ("server.port", int),
    "LIFT3D_API_KEYS": ("server.api_keys", _split_list),
    "LIFT3D_QUEUE_SIZE": ("server.queue_size", int),
    "LIFT3D_JOB_DEADLINE_SECONDS": ("server.job_deadline_seconds", float),
    "LIFT3D_WATCHDOG_GRACE_SECONDS": ("server.watchdog_grace_seconds", float),
    "LIFT3D_SHUTDOWN_GRACE_SECONDS": ("server.shutdown_grace_seconds", float),
    "LIFT3D_CORS_ORIGINS": ("server.cors_origins", _split_list),
    "LIFT3D_DEMO": ("server.demo", _flag),
    "LIFT3D_LINK_SECRET": ("server.link_secret", str),
    "LIFT3D_LINK_TTL_SECONDS": ("server.link_ttl_seconds", float),
    "LIFT3D_PULL_MISSING": ("server.pull_missing", _flag),
    "LIFT3D_ALLOW_UNVERIFIED": ("server.allow_unverified_weights", _flag),
    "LIFT3D_IMAGE_URL_ALLOWLIST": ("server.image_url_allowlist", _split_list),
    "LIFT3D_MAX_CONNECTIONS": ("server.max_connections", int),
    "LIFT3D_HEADER_TIMEOUT_SECONDS": ("server.header_timeout_seconds", float),
    "LIFT3D_KEEP_ALIVE_SECONDS": ("server.keep_alive_seconds", float),
    "LIFT3D_BODY_IDLE_TIMEOUT_SECONDS": ("server.body_idle_timeout_seconds", float),
    "LIFT3D_BODY_TIMEOUT_SECONDS": ("server.body_timeout_seconds", float),
    "LIFT3D_MAX_UPLOAD_BYTES_IN_FLIGHT": ("server.max_upload_bytes_in_flight", int),
    "LIFT3D_DATA_DIR": ("storage.data_dir", str),
    "LIFT3D_RETENTION_SECONDS": ("storage.default_retention_seconds", int),
    "LIFT3D_MAX_RETENTION_SECONDS": ("storage.max_retention_seconds", int),
    "LIFT3D_SWEEP_INTERVAL_SECONDS": ("storage.sweep_interval_seconds", float),
    "LIFT3D_ENCRYPTION_KEYS": ("storage.encryption_keys", _split_list),
    "LIFT3D_WEBHOOK_SECRET": ("storage.webhook_secret", str),
    "LIFT3D_WEBHOOK_ALLOWLIST": ("storage.webhook_allowlist", _split_list),
    "LIFT3D_WEBHOOK_MAX_ATTEMPTS": ("storage.webhook_max_attempts", int),
    "LIFT3D_RESULTS": ("storage.results", str),
    "LIFT3D_RESULTS_ENCRYPTION": ("storage.results_encryption", str),
    "LIFT3D_RESULTS_SSE": ("storage.results_sse", str),
    "LIFT3D_RESULTS_KMS_KEY_ID": ("storage.results_kms_key_id", str),
    "LIFT3D_RESULTS_URL_TTL_SECONDS": ("storage.results_url_ttl_seconds", int),
    "LIFT3D_RESULTS_ADDRESSING_STYLE": ("storage.results_addressing_style", str),
}


def load_settings(environ: dict[str, str] | None = None, **overrides: Any) -> Settings:
    """Settings from the environment, then keyword overrides (dotted names with '__' for '.')."""
    environ = dict(os.environ if environ is None else environ)
    dotted: dict[str, Any] = {}
    for var, (name, parse) in ENV_VARS.items():
        if var in environ and environ[var] != "":
            dotted[name] = parse(environ[var])
    for key, value in overrides.items():
        if value is not None:
            dotted[key.replace("__", ".")] = value
    return Settings().with_overrides(dotted)

"""`pull`/`verify`/`lock` against a fake Hub and file host on 127.0.0.1.

Covers: sha256 mismatch refused, unverified entries refused, interrupted
downloads resumed (our URL fetcher and huggingface_hub), mirror fallback,
idempotency, .ckpt/.bin conversion with weights_only, and `lock` resolution.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lift3d.weights.lock import WeightsLock, parse_lock
from lift3d.weights.pull import pull_profile
from lift3d.weights.resolve import resolve_lock
from lift3d.weights.verify import verify_profile
from tests.support.fake_hub import FakeHub, FakeHubServer

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB of known bytes


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def entry(
    path: str,
    sources: list[str],
    *,
    data: bytes | None = None,
    status: str = "verified",
    convert: str = "none",
    unresolved: list[str] | None = None,
) -> str:
    pins = f'size = {len(data)}\nsha256 = "{sha(data)}"\n' if data is not None else ""
    extra = f"unresolved = {unresolved!r}\n".replace("'", '"') if unresolved else ""
    text = (
        f'[[artifact]]\npath = "{path}"\nstage = "background"\nprofiles = ["test"]\nlicence = "Apache-2.0"\n'
        f'status = "{status}"\nconvert = "{convert}"\n{pins}{extra}'
    )
    return text + "".join(f"[[artifact.source]]\n{source}\n" for source in sources)


def url_source(url: str) -> str:
    return f'kind = "url"\nurl = "{url}"'


def hub_source(repo: str, file: str, revision: str = "") -> str:
    pinned = f'\nrevision = "{revision}"' if revision else ""
    return f'kind = "hf"\nrepo = "{repo}"\nfile = "{file}"{pinned}'


def make_lock(*entries: str) -> WeightsLock:
    return parse_lock("version = 1\n[profiles.test]\n" + "\n".join(entries))


def pull(lock: WeightsLock, weights_dir: Path, hub: FakeHub, **options):  # type: ignore[no-untyped-def]
    lines: list[str] = []
    outcomes = pull_profile(lock, "test", weights_dir, hub_endpoint=hub.url, echo=lines.append, **options)
    return outcomes, lines


@pytest.fixture
def hub():  # type: ignore[no-untyped-def]
    with FakeHubServer() as fake:
        yield fake


def test_pull_installs_checks_and_is_idempotent(hub: FakeHub, tmp_path: Path) -> None:
    url = hub.add_file("model.onnx", PAYLOAD)
    lock = make_lock(entry("rembg/model.onnx", [url_source(url)], data=PAYLOAD))
    outcomes, _ = pull(lock, tmp_path, hub)
    assert [o.action for o in outcomes] == ["installed"]
    assert (tmp_path / "rembg" / "model.onnx").read_bytes() == PAYLOAD
    assert [c.state for c in verify_profile(lock, "test", tmp_path)] == ["ok"]
    requests_before = len(hub.requests)
    outcomes, _ = pull(lock, tmp_path, hub)
    assert [o.action for o in outcomes] == ["present"]
    assert len(hub.requests) == requests_before  # nothing fetched the second time


def test_sha256_mismatch_is_refused_and_nothing_installed(hub: FakeHub, tmp_path: Path) -> None:
    tampered = PAYLOAD[:-1] + b"\x00"
    url = hub.add_file("model.onnx", tampered)
    lock = make_lock(entry("rembg/model.onnx", [url_source(url)], data=PAYLOAD))
    outcomes, lines = pull(lock, tmp_path, hub)
    assert outcomes[0].action == "failed"
    assert f"expected {sha(PAYLOAD)}" in outcomes[0].detail and "refused" in outcomes[0].detail
    assert not (tmp_path / "rembg" / "model.onnx").exists()
    assert not list((tmp_path / ".lift3d" / "staging").rglob("model.onnx"))  # the bad bytes are deleted


def test_tampered_installed_file_is_reported_by_verify(hub: FakeHub, tmp_path: Path) -> None:
    url = hub.add_file("model.onnx", PAYLOAD)
    lock = make_lock(entry("rembg/model.onnx", [url_source(url)], data=PAYLOAD))
    pull(lock, tmp_path, hub)
    (tmp_path / "rembg" / "model.onnx").write_bytes(b"x" + PAYLOAD[1:])
    assert [c.state for c in verify_profile(lock, "test", tmp_path)] == ["corrupt"]
    # pull notices the change (size/mtime differ from its record) and fetches the pinned bytes again
    outcomes, _ = pull(lock, tmp_path, hub)
    assert outcomes[0].action == "installed"
    assert (tmp_path / "rembg" / "model.onnx").read_bytes() == PAYLOAD


def test_unverified_entry_is_refused_unless_allowed(hub: FakeHub, tmp_path: Path) -> None:
    url = hub.add_file("model.onnx", PAYLOAD)
    lock = make_lock(
        entry("rembg/model.onnx", [url_source(url)], status="unresolved", unresolved=["sha256", "size"])
    )
    outcomes, _ = pull(lock, tmp_path, hub)
    assert outcomes[0].action == "refused" and "--allow-unverified" in outcomes[0].detail
    assert not hub.requests  # refused before any download
    outcomes, _ = pull(lock, tmp_path, hub, allow_unverified=True)
    assert outcomes[0].action == "installed" and "UNVERIFIED" in outcomes[0].detail
    assert sha(PAYLOAD) in outcomes[0].detail  # the digest to pin is shown
    checks = verify_profile(lock, "test", tmp_path)
    assert [c.state for c in checks] == ["unverified"]


def test_falls_back_to_the_mirror_when_the_primary_is_unreachable(hub: FakeHub, tmp_path: Path) -> None:
    mirror = hub.add_file("mirror.onnx", PAYLOAD)
    primary = f"{hub.url}/files/gone.onnx"  # 404
    lock = make_lock(entry("rembg/model.onnx", [url_source(primary), url_source(mirror)], data=PAYLOAD))
    outcomes, lines = pull(lock, tmp_path, hub, sources="primary")
    assert outcomes[0].action == "failed" and "404" in outcomes[0].detail
    outcomes, lines = pull(lock, tmp_path, hub)
    assert outcomes[0].action == "installed" and "mirror.onnx" in outcomes[0].detail
    assert any("gone.onnx" in line for line in lines)  # the primary's failure is reported


def test_interrupted_url_download_resumes_from_the_partial_file(hub: FakeHub, tmp_path: Path) -> None:
    cut = 300_000
    url = hub.add_file("model.onnx", PAYLOAD, cut_first_get_after=cut)
    lock = make_lock(entry("rembg/model.onnx", [url_source(url)], data=PAYLOAD))
    outcomes, _ = pull(lock, tmp_path, hub)
    assert outcomes[0].action == "failed"
    partial = next((tmp_path / ".lift3d" / "staging").rglob("model.onnx.incomplete"))
    assert partial.stat().st_size == cut
    outcomes, _ = pull(lock, tmp_path, hub)
    assert outcomes[0].action == "installed"
    gets = [r for r in hub.requests if r.method == "GET"]
    assert [r.range for r in gets] == [None, f"bytes={cut}-"]  # the second run asked only for the rest
    assert (tmp_path / "rembg" / "model.onnx").read_bytes() == PAYLOAD


def test_hub_download_is_pinned_to_the_revision_and_resumes(hub: FakeHub, tmp_path: Path) -> None:
    from huggingface_hub import constants

    # huggingface_hub writes in DOWNLOAD_CHUNK_SIZE pieces: cut the connection after the first one.
    chunk = constants.DOWNLOAD_CHUNK_SIZE
    payload = PAYLOAD * (2 * chunk // len(PAYLOAD) + 1)
    hub.add_repo_file("org/model", "weights.onnx", payload, cut_first_get_after=chunk + 4096)
    source = hub_source("org/model", "weights.onnx", hub.commit)
    lock = make_lock(entry("org/model/weights.onnx", [source], data=payload))
    outcomes, _ = pull(lock, tmp_path, hub)
    if outcomes[0].action == "failed":  # huggingface_hub gave up inside the call; the next run resumes
        outcomes, _ = pull(lock, tmp_path, hub)
    assert outcomes[0].action == "installed", outcomes[0].detail
    resolve_paths = {r.path for r in hub.requests if "/resolve/" in r.path}
    assert resolve_paths == {f"/org/model/resolve/{hub.commit}/weights.onnx"}  # pinned: never "main"
    ranges = [r.range for r in hub.requests if r.method == "GET"]
    assert ranges == [None, f"bytes={chunk}-"]  # the retry asked only for what was missing
    assert (tmp_path / "org" / "model" / "weights.onnx").read_bytes() == payload


def _torch_bytes(obj: object, *, legacy: bool = False) -> bytes:
    """torch.save output; ``legacy`` writes the pre-zip pickle format (TripoSR's model.ckpt is one)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer, _use_new_zipfile_serialization=not legacy)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("convert", "legacy"),
    [("checkpoint-state-dict", False), ("state-dict", True)],
    ids=["lightning-ckpt", "flat-legacy-ckpt"],  # InstantMesh's; TripoSR's (torch's pre-zip format)
)
def test_checkpoint_is_converted_to_safetensors_with_its_keys(
    hub: FakeHub, tmp_path: Path, convert: str, legacy: bool
) -> None:
    generator = torch.Generator().manual_seed(0)
    state = {
        "lrm_generator.encoder.weight": torch.randn(8, 4, generator=generator),
        "lrm_generator.decoder.bias": torch.randn(8, generator=generator),
    }
    payload = {"state_dict": state, "epoch": 3, "global_step": 10} if convert == "checkpoint-state-dict" else state
    ckpt = _torch_bytes(payload, legacy=legacy)
    assert ckpt.startswith(b"PK") != legacy  # a zip archive, or really the legacy pickle
    hub.add_repo_file("org/lrm", "model.ckpt", ckpt)
    lock = make_lock(
        entry(
            "org/lrm/model.safetensors",
            [hub_source("org/lrm", "model.ckpt", hub.commit)],
            data=ckpt,
            status="pinned",
            convert=convert,
        )
    )
    outcomes, _ = pull(lock, tmp_path, hub)
    assert outcomes[0].action == "installed", outcomes[0].detail
    converted = load_file(tmp_path / "org" / "lrm" / "model.safetensors")
    assert set(converted) == set(state)
    for name, tensor in state.items():
        assert torch.equal(converted[name], tensor)
    assert not list(tmp_path.rglob("*.ckpt"))  # the pickle is gone once converted
    assert [c.state for c in verify_profile(lock, "test", tmp_path)] == ["ok"]
    (tmp_path / "org" / "lrm" / "model.safetensors").write_bytes(b"garbage")
    assert [c.state for c in verify_profile(lock, "test", tmp_path)] == ["corrupt"]


class _Exploit:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (print, ("this pickle ran code",))


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_pickle_that_would_run_code_is_refused(
    hub: FakeHub, tmp_path: Path, capsys: pytest.CaptureFixture[str], legacy: bool
) -> None:
    evil = _torch_bytes({"weight": torch.zeros(2), "payload": _Exploit()}, legacy=legacy)
    hub.add_repo_file("org/unet", "diffusion_pytorch_model.bin", evil)
    lock = make_lock(
        entry(
            "org/unet/diffusion_pytorch_model.safetensors",
            [hub_source("org/unet", "diffusion_pytorch_model.bin", hub.commit)],
            data=evil,
            status="pinned",
            convert="state-dict",
        )
    )
    outcomes, _ = pull(lock, tmp_path, hub)
    assert outcomes[0].action == "failed" and "weights_only=True" in outcomes[0].detail
    assert "this pickle ran code" not in capsys.readouterr().out
    assert not (tmp_path / "org" / "unet" / "diffusion_pytorch_model.safetensors").exists()


def test_lock_command_resolves_revision_and_digests(hub: FakeHub, tmp_path: Path) -> None:
    config = b'{"in_channels": 4}'
    hub.add_repo_file("org/pipe", "unet/config.json", config, lfs=False)
    hub.add_repo_file("org/pipe", "unet/model.safetensors", PAYLOAD)
    unresolved = ["revision", "sha256", "size"]
    lock_path = tmp_path / "weights.lock"
    lock_path.write_text(
        "# keep me\nversion = 1\n[profiles.test]\n"
        + entry("pipe/unet/config.json", [hub_source("org/pipe", "unet/config.json")], status="unresolved", unresolved=unresolved)
        + entry("pipe/unet/model.safetensors", [hub_source("org/pipe", "unet/model.safetensors")], status="unresolved", unresolved=unresolved)
    )
    lock, count = resolve_lock(lock_path, endpoint=hub.url, echo=lambda _: None)
    assert count == 2
    config_entry = lock.by_path("pipe/unet/config.json")
    weights_entry = lock.by_path("pipe/unet/model.safetensors")
    assert config_entry.revision == hub.commit and weights_entry.revision == hub.commit
    assert (config_entry.sha256, config_entry.size, config_entry.status) == (sha(config), len(config), "verified")
    assert (weights_entry.sha256, weights_entry.size, weights_entry.status) == (sha(PAYLOAD), len(PAYLOAD), "pinned")
    assert lock_path.read_text().startswith("# keep me")
    outcomes, _ = pull(lock, tmp_path / "w", hub)  # the resolved lock pulls without --allow-unverified
    assert [o.action for o in outcomes] == ["installed", "installed"]


def test_lock_refuses_to_change_an_existing_pin(hub: FakeHub, tmp_path: Path) -> None:
    hub.add_repo_file("org/pipe", "unet/model.safetensors", PAYLOAD)
    lock_path = tmp_path / "weights.lock"
    text = "version = 1\n[profiles.test]\n" + entry(
        "pipe/unet/model.safetensors",
        [hub_source("org/pipe", "unet/model.safetensors")],
        status="unresolved",
        unresolved=["revision", "size"],
    ).replace('convert = "none"\n', f'convert = "none"\nsha256 = "{"f" * 64}"\n')
    lock_path.write_text(text)
    with pytest.raises(Exception, match="refusing to change a pin"):
        resolve_lock(lock_path, endpoint=hub.url, echo=lambda _: None)
    assert lock_path.read_text() == text


def test_pull_profile_fast_fetches_only_the_fast_pipelines_files(hub: FakeHub, tmp_path: Path) -> None:
    from lift3d.weights.lock import load_lock

    committed = load_lock()
    entries = []
    for index, artifact in enumerate(committed.artifacts):
        data = PAYLOAD[: 1000 + index]
        url = hub.add_file(f"f{index}", data)
        text = entry(artifact.path, [url_source(url)], data=data).replace('profiles = ["test"]', f"profiles = {artifact.profiles!r}")
        entries.append(text.replace("'", '"'))
    profiles = "".join(f"[profiles.{name}]\n" for name in committed.profiles)
    lock = parse_lock("version = 1\n" + profiles + "\n".join(entries))

    outcomes = pull_profile(lock, "fast", tmp_path, hub_endpoint=hub.url, echo=lambda _: None)
    assert all(o.action == "installed" for o in outcomes)
    installed = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file() and ".lift3d" not in p.parts)
    assert installed == sorted(a.path for a in committed.for_profile("fast"))
    assert len(hub.requests) == len(installed)  # nothing of the multiview models was even asked for

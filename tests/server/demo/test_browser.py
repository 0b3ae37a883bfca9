"""The demo page in a real browser against `lift3d serve --weights tiny`.

Drop a real photo, watch the stages advance, wait for the viewer to load the model and
draw it, download the GLB and validate it, see a 415 for a text file, and check that no
request ever left the server's origin.
"""

from __future__ import annotations

import base64
import io
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support.browser import chromium
from tests.support.gltf_validator import assert_valid_glb
from tests.support.lifecycle import API_KEY, ServerProcess

pytestmark = pytest.mark.timeout(420)

JOB_SECONDS = 240


@pytest.fixture(scope="module")
def server(tmp_path_factory, request) -> ServerProcess:
    weights_dir = request.getfixturevalue("u2netp_weights_dir")
    data_dir = tmp_path_factory.mktemp("demo") / "data"
    env = {"LIFT3D_STEPS": "2", "LIFT3D_GRID_RESOLUTION": "32"}
    process = ServerProcess(data_dir, engine="tiny", env=env, weights_dir=weights_dir).start()
    yield process
    process.stop()


def drop_file(page, selector: str, name: str, mime: str, data: bytes) -> None:
    """A real drop event carrying ``data`` as a File, as a user dragging it onto the page does."""
    transfer = page.evaluate_handle(
        """([name, mime, b64]) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, { type: mime }));
            return transfer;
        }""",
        [name, mime, base64.b64encode(data).decode()],
    )
    page.dispatch_event(selector, "drop", {"dataTransfer": transfer})


def open_page(browser, server: ServerProcess):
    page = browser.new_page(viewport={"width": 1280, "height": 1000}, accept_downloads=True)
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(server.base_url + "/demo")
    page.fill("#api-key", API_KEY)
    page.click("#key-form button")
    page.wait_for_selector("#key-form", state="hidden")
    return page, requests


def test_a_photo_becomes_a_model_in_the_viewer(server: ServerProcess, shared_images) -> None:
    photo = next(p for p in shared_images if p.name == "chair.png")
    with chromium() as browser:
        page, requests = open_page(browser, server)
        drop_file(page, "#drop", photo.name, "image/png", photo.read_bytes())
        assert page.is_visible("#preview")
        page.check("input[name=return_views]")
        page.fill("input[name=target_faces]", "5000")
        page.select_option("select[name=texture_size]", "512")
        page.click("#submit")

        # The stages advance: some stage is marked active, then done, before the end.
        page.wait_for_selector("#stages li.active", timeout=JOB_SECONDS * 1000)
        page.wait_for_selector("#stages li.done", timeout=JOB_SECONDS * 1000)
        page.wait_for_selector("#viewer[data-state=loaded]", timeout=JOB_SECONDS * 1000)
        assert page.get_attribute("body", "data-state") == "done"
        assert len(page.query_selector_all("#stages li.done")) == 5
        assert page.is_visible("#views")
        assert "faces" in page.inner_text("#qa")

        # The canvas is not blank: the model differs from the empty viewer's background.
        page.wait_for_timeout(1000)
        shot = np.asarray(Image.open(io.BytesIO(page.locator("#viewer").screenshot())).convert("RGB")).astype(int)
        background = np.median(shot.reshape(-1, 3), axis=0)
        differing = (np.abs(shot - background).sum(axis=-1) > 30).mean()
        assert differing > 0.01, f"only {differing:.2%} of the viewer differs from its background"

        with page.expect_download() as download_info:
            page.click("#download")
        glb = Path(download_info.value.path()).read_bytes()
        assert glb[:4] == b"glTF"
        assert_valid_glb(glb)

        screenshot = Path(tempfile.mkdtemp(prefix="lift3d-demo-")) / "demo.png"
        page.screenshot(path=str(screenshot), full_page=True)
        assert screenshot.stat().st_size > 20_000

    origin = server.base_url
    foreign = [url for url in requests if not (url.startswith(origin + "/") or url.startswith(("blob:", "data:")))]
    assert foreign == [], foreign


def test_a_text_file_shows_the_servers_415(server: ServerProcess) -> None:
    with chromium() as browser:
        page, _ = open_page(browser, server)
        drop_file(page, "#drop", "notes.txt", "text/plain", b"this is not an image\n" * 20)
        page.click("#submit")
        page.wait_for_selector("#error:not([hidden])")
        message = page.inner_text("#error")
        assert message.startswith("Unsupported media type:"), message
        assert page.get_attribute("body", "data-state") == "error"

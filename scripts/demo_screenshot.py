"""Make the README's screenshot of the demo page: a tiny-weights server, one real photo, headless Chromium.

    .venv/bin/python scripts/demo_screenshot.py [PHOTO] [-o docs/images/demo.png]

Without PHOTO it draws a synthetic one (a shaded ball on a block), so the committed
screenshot carries no third-party image.

Needs Debian's `chromium` and the playwright package (test extra). Tiny weights are random
models: the screenshot shows the page, not a real model's shape (the page says so too).
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--no-sandbox", "--use-gl=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with {process.returncode}")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit("the server did not turn ready")


def synthetic_photo(path: Path, size: int = 512) -> Path:
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    image = np.full((size, size, 3), 245, np.float32)
    block = (x > 0.25) & (x < 0.75) & (y > 0.6) & (y < 0.85)
    image[block] = np.array([70, 110, 190]) * (1.1 - 0.4 * x[block, None])
    dx, dy = x - 0.5, y - 0.42
    ball = dx**2 + dy**2 < 0.2**2
    light = np.clip(1.0 - 2.2 * np.hypot(dx + 0.07, dy + 0.07), 0.25, 1.0)
    image[ball] = np.array([220, 90, 50]) * light[ball, None]
    Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(path)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photo", type=Path, nargs="?", help="default: a synthetic photo")
    parser.add_argument("-o", "--output", type=Path, default=REPO / "docs" / "images" / "demo.png")
    parser.add_argument("--weights-dir", help="where rembg/u2netp.onnx is (default: the server's)")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("needs Chromium (Debian: apt-get install chromium)")
    key = secrets.token_urlsafe(16)
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="lift3d-screenshot-") as data_dir:
        photo = args.photo or synthetic_photo(Path(data_dir) / "photo.png")
        env = {k: v for k, v in os.environ.items() if not k.startswith("LIFT3D_")}
        env.update(LIFT3D_API_KEYS=key, LIFT3D_DATA_DIR=data_dir, LIFT3D_STEPS="2", LIFT3D_GRID_RESOLUTION="32")
        if args.weights_dir:
            env["LIFT3D_WEIGHTS_DIR"] = args.weights_dir
        command = [sys.executable, "-m", "lift3d.entrypoints.cli", "serve", "--weights", "tiny", "--port", str(port)]
        server = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_ready(base, server)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.goto(base + "/demo")
                page.fill("#api-key", key)
                page.click("#key-form button")
                page.set_input_files("#image", str(photo))
                page.click("#submit")
                page.wait_for_selector("#viewer[data-state=loaded]", timeout=300_000)
                page.wait_for_timeout(1500)
                args.output.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(args.output), full_page=True)
                browser.close()
        finally:
            server.terminate()
            server.wait(60)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

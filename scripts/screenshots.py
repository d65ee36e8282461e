"""Take the README's screenshots of the demo dashboard with Debian's Chromium (no browser download).

    .venv/bin/python scripts/screenshots.py [--out docs/screenshots]

Starts `ssehub serve` with the demo on a free loopback port, lets it run, pauses one download, and saves
`dashboard.png` (connected), `dashboard-dark.png` (the dark colour scheme) and `dashboard-reconnecting.png`
(the server stopped: the indicator counts reconnect attempts).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from ssehub.testing import free_port

if TYPE_CHECKING:
    from playwright.async_api import ViewportSize

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
VIEWPORT: ViewportSize = {"width": 1360, "height": 900}


def start_server(port: int) -> subprocess.Popen[bytes]:
    """`ssehub serve` with the demo, waiting until it answers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSEHUB_")}
    env.update({"SSEHUB_DEMO": "true", "SSEHUB_RETRY_MS": "500", "SSEHUB_LOG_LEVEL": "warning"})
    process = subprocess.Popen(
        [sys.executable, "-m", "ssehub", "serve", "--host", "127.0.0.1", "--port", str(port)], env=env
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/v1/events/health", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise SystemExit("ssehub serve did not start")
        time.sleep(0.1)


def stop_server(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM and reap, by PID."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


async def shoot(out: Path) -> None:
    """Run the server and the browser; save the screenshots into ``out``."""
    from playwright.async_api import async_playwright

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_server(port)
    try:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            try:
                light = await (await browser.new_context(viewport=VIEWPORT, color_scheme="light")).new_page()
                await light.goto(base + "/")
                async with httpx.AsyncClient(base_url=base, timeout=5) as http:
                    await http.post("/demo/downloads", json={"name": "holiday-video-4k.mp4", "size_mb": 2048})
                    await asyncio.sleep(9)
                    state = (await http.get("/demo/state")).json()
                    running = [d for d in state["downloads"] if d["status"] == "downloading"]
                    if running:
                        await http.post(f"/demo/downloads/{running[-1]['download_id']}/pause")
                await asyncio.sleep(2)
                await light.screenshot(path=str(out / "dashboard.png"))
                dark = await (await browser.new_context(viewport=VIEWPORT, color_scheme="dark")).new_page()
                await dark.goto(base + "/")
                await asyncio.sleep(3)
                await dark.screenshot(path=str(out / "dashboard-dark.png"))
                stop_server(server)
                deadline = time.monotonic() + 30
                while await light.evaluate("demoClient.attempt") < 2 and time.monotonic() < deadline:
                    await asyncio.sleep(0.2)
                await light.screenshot(path=str(out / "dashboard-reconnecting.png"))
            finally:
                await browser.close()
    finally:
        stop_server(server)


def main() -> None:
    """Parse arguments and take the screenshots."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "docs" / "screenshots")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    asyncio.run(shoot(args.out))
    print(f"saved screenshots in {args.out}")


if __name__ == "__main__":
    main()

"""A headless Chromium driven through the DevTools protocol (aiohttp's websocket client, which
MLflow already depends on): open a page at a given window size, set the page's localStorage, wait
for text, ask where elements are drawn, and take a screenshot. Enough to check what a person sees."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any, Optional

import aiohttp

from tests.tuner.tracking.conftest import free_port

CHROMIUM = Path("/usr/bin/chromium")


class Page:
    """One Chromium tab. Use as ``async with Page(profile, width, height) as page``."""

    def __init__(self, profile: Path, width: int, height: int):
        self.port = free_port()
        self.width, self.height = width, height
        self.browser = subprocess.Popen(
            [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--remote-debugging-port={self.port}", f"--user-data-dir={profile}",
             f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.ids = itertools.count(1)

    async def __aenter__(self) -> "Page":
        self.session = aiohttp.ClientSession()
        self.socket = await self.session.ws_connect(self._tab_socket(), max_msg_size=0)
        await self.send("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height,
                        deviceScaleFactor=1, mobile=False)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.socket.close()
        await self.session.close()
        self.browser.terminate()
        self.browser.wait(timeout=30)

    def _tab_socket(self) -> str:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=2) as reply:
                    pages = [t for t in json.load(reply) if t["type"] == "page"]
                if pages:
                    return pages[0]["webSocketDebuggerUrl"]
            except OSError:
                pass
            time.sleep(0.3)
        raise RuntimeError("Chromium's DevTools endpoint did not come up")

    async def send(self, method: str, **params) -> dict:
        call_id = next(self.ids)
        await self.socket.send_json({"id": call_id, "method": method, "params": params})
        while True:  # events arrive in between: skip them
            message = await self.socket.receive_json(timeout=60)
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True,
                                 awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:60]}…: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def goto(self, url: str) -> None:
        await self.send("Page.navigate", url=url)

    async def wait_for_text(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        probe = f"!!document.body && document.body.innerText.includes({json.dumps(text)})"
        while not await self.evaluate(probe):
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not shown within {timeout:.0f} s")
            await asyncio.sleep(0.5)

    async def click(self, selector: str) -> bool:
        """Clicks the first element matching the CSS ``selector``; False when there is none."""
        return await self.evaluate(f"""(() => {{
            const e = document.querySelector({json.dumps(selector)});
            if (e) e.click();
            return !!e;
        }})()""")

    async def seen_at(self, label: str) -> Optional[dict]:
        """The on-screen box of an element whose whole text is ``label`` and that a person sees:
        the topmost element at its centre, inside the window (not scrolled away inside a table, not
        under a panel). None when no such element is drawn."""
        return await self.evaluate(f"""(() => {{
            const hits = [...document.querySelectorAll('body *')].filter(e =>
                e.children.length === 0 && e.textContent.trim() === {json.dumps(label)});
            for (const e of hits) {{
                const r = e.getBoundingClientRect();
                const x = (r.left + r.right) / 2, y = (r.top + r.bottom) / 2;
                if (r.width === 0 || x < 0 || y < 0 || x > innerWidth || y > innerHeight) continue;
                const top = document.elementFromPoint(x, y);
                if (top && (top === e || e.contains(top) || top.contains(e)))
                    return {{left: r.left, right: r.right, top: r.top, bottom: r.bottom}};
            }}
            return null;
        }})()""")

    async def screenshot(self, path: Path) -> Path:
        shot = await self.send("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

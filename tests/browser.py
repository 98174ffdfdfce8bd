"""A real headless Chromium (Debian's `chromium`) driven over the DevTools protocol with aiohttp's
websocket client: navigate, evaluate JavaScript, take screenshots. No downloaded browser."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import re
import subprocess
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from tests.servers import require_binary, stop_process

_LISTENING = re.compile(r"DevTools listening on (ws://\S+)")
START_TIMEOUT = 30.0


class Page:
    """One tab, spoken to over its DevTools websocket."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self._socket = socket
        self._ids = itertools.count(1)

    async def send(self, method: str, timeout: float = 30.0, **params: Any) -> dict[str, Any]:
        """Call a DevTools method and return its result (events in between are skipped)."""
        call_id = next(self._ids)
        await self._socket.send_json({"id": call_id, "method": method, "params": params})
        async with asyncio.timeout(timeout):
            while True:
                message = json.loads((await self._socket.receive()).data)
                if message.get("id") == call_id:
                    if "error" in message:
                        raise RuntimeError(f"{method}: {message['error']}")
                    return dict(message.get("result", {}))

    async def goto(self, url: str, width: int = 1920, height: int = 1080) -> None:
        """Load `url` in a window of width x height CSS pixels and wait for its load event."""
        await self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                        mobile=width < 800)
        await self.send("Page.navigate", url=url)
        await self.wait_for("document.readyState === 'complete' && location.href === " + json.dumps(url))

    async def evaluate(self, expression: str) -> Any:
        """Evaluate a JavaScript expression in the page and return its (JSON) value."""
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 30.0) -> Any:
        """Poll a JavaScript expression until it is truthy; return its value."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = await self.evaluate(expression)
            except RuntimeError:  # the page is reloading (its meta refresh): ask the next one
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"not true after {timeout} s: {expression}")
            await asyncio.sleep(0.2)

    async def screenshot(self, path: Path) -> Path:
        """Save a PNG of the whole page (not just the window)."""
        result = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(result["data"]))
        return path


@asynccontextmanager
async def chromium(profile: Path) -> AsyncIterator[Page]:
    """Start headless Chromium on a free loopback debugging port; yield its first tab."""
    binary = require_binary("chromium")
    proc = subprocess.Popen(
        [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
         "--disable-background-networking", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
         f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        browser = await asyncio.to_thread(_devtools_url, proc)
        port = browser.split("/")[2]
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://{port}/json/list") as response:
                targets = await response.json()
            (tab,) = [t for t in targets if t["type"] == "page"][:1]
            async with session.ws_connect(tab["webSocketDebuggerUrl"], max_msg_size=0) as socket:
                page = Page(socket)
                await page.send("Page.enable")
                yield page
    finally:
        stop_process(proc)  # type: ignore[arg-type]


def _devtools_url(proc: subprocess.Popen[str]) -> str:
    """Read Chromium's stderr until it prints its DevTools websocket URL."""
    assert proc.stderr is not None
    deadline = time.monotonic() + START_TIMEOUT
    seen = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            break
        seen.append(line)
        match = _LISTENING.search(line)
        if match:
            # Keep reading its log, so that a full pipe never blocks the browser.
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            return match.group(1)
    raise RuntimeError("chromium did not start:\n" + "".join(seen[-20:]))

"""Headless Chromium for the tests: find it (or skip), run it once, or drive it over DevTools.

Chromium is Debian's ``chromium`` package at /usr/bin/chromium. The tests never install it:
CI's ``.ci/run`` does (``apt-get install chromium`` when it is missing and CI runs as root), and
elsewhere the browser tests are skipped with the reason.

:class:`Browser` speaks the Chrome DevTools protocol over ``--remote-debugging-pipe`` (JSON
messages separated by NUL bytes on file descriptors 3 and 4): no WebDriver, no websocket
library, only the standard library. It evaluates JavaScript in the page and sends real input
events (mouse presses and moves, key presses) through ``Input.dispatch*``, which Chromium turns
into the same pointer, input and change events a user's hand makes.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from typing import Any

import pytest

CHROMIUM = os.environ.get("LOGITLAB_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--disable-extensions", "--mute-audio"]


def chromium() -> str:
    """The Chromium binary, or skip the calling test saying how to get one."""
    if os.path.exists(CHROMIUM):
        return CHROMIUM
    pytest.skip(f"no browser: {CHROMIUM} is missing (install Debian's chromium package; "
                ".ci/run does so when it runs as root)")


def run_headless(binary: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run ``chromium --headless ... args`` once in a fresh profile (e.g. --dump-dom, --screenshot)."""
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([binary, *FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=timeout)


class BrowserError(RuntimeError):
    """The browser answered a DevTools command with an error, or not at all."""


class Browser:
    """One headless Chromium with one page, driven over the DevTools pipe.

    Use as a context manager. ``goto(url)`` loads a page and waits for ``load``;
    ``evaluate(js)`` returns the value of an expression; ``click``, ``drag`` and ``press``
    send real input events at page coordinates.
    """

    def __init__(self, binary: str, *, width: int = 1400, height: int = 1000, timeout: float = 30.0):
        self.timeout = timeout
        self._profile = tempfile.mkdtemp(prefix="logitlab-chromium-")
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        # Move the child's ends above 10 so that placing them at 3 and 4 cannot clobber them.
        high_r2, high_w2 = _above(to_child_r, 10), _above(from_child_w, 10)
        os.close(to_child_r)
        os.close(from_child_w)

        # bash (dash takes one-digit descriptors only) places them at 3 (our commands) and 4 (the answers), then
        # becomes chromium.
        self._proc = subprocess.Popen(
            ["/bin/bash", "-c", f'exec 3<&{high_r2} 4>&{high_w2} {high_r2}<&- {high_w2}>&-; exec "$0" "$@"',
             binary, *FLAGS, f"--user-data-dir={self._profile}", "--remote-debugging-pipe",
             f"--window-size={width},{height}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            pass_fds=(high_r2, high_w2))
        os.close(high_r2)
        os.close(high_w2)
        self._buffer = b""
        self._next_id = 0
        self._events: list[dict[str, Any]] = []
        target = self._call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self._session = self._call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.send("Page.enable")
        self.send("Runtime.enable")
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})

    # ---- the pipe ----
    def _write(self, message: dict[str, Any]) -> None:
        data = json.dumps(message).encode() + b"\0"
        while data:
            data = data[os.write(self._to_child, data):]

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or self._proc.poll() is not None:
                raise BrowserError(f"chromium did not answer (exit status {self._proc.poll()}): "
                                   f"{self._stderr_tail()}")
            ready, _, _ = select.select([self._from_child], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(self._from_child, 1 << 16)
                if not chunk:
                    raise BrowserError(f"chromium closed the pipe: {self._stderr_tail()}")
                self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def _stderr_tail(self) -> str:
        if self._proc.poll() is None or self._proc.stderr is None:
            return ""
        return self._proc.stderr.read().decode(errors="replace")[-2000:]

    def _call(self, method: str, params: dict[str, Any] | None = None, *, session: str | None = None) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        self._write(message)
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self._events.append(reply)

    def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """A DevTools command to the page's session; its result."""
        return self._call(method, params, session=self._session)

    def wait_event(self, method: str) -> dict[str, Any]:
        """Wait for (and consume) the next event named ``method``."""
        deadline = time.monotonic() + self.timeout
        while True:
            for index, event in enumerate(self._events):
                if event["method"] == method:
                    return self._events.pop(index)
            self._events.append(self._read(deadline))

    # ---- the page ----
    def goto(self, url: str) -> None:
        """Load ``url`` afresh (through about:blank, so that a change of fragment alone reloads too)."""
        for target in ("about:blank", url):
            self._events = [e for e in self._events if e["method"] != "Page.loadEventFired"]
            self.send("Page.navigate", {"url": target})
            self.wait_event("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (JSON-serializable; promises awaited)."""
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"{expression[:80]!r} raised: {text}")
        return result["result"].get("value")

    def center(self, selector: str) -> tuple[float, float]:
        """The page coordinates of the center of the first element matching ``selector``, scrolled into view."""
        box = self.evaluate(
            f"(function () {{ var e = document.querySelector({json.dumps(selector)});"
            " if (!e) return null; e.scrollIntoView({block: 'center'}); var r = e.getBoundingClientRect();"
            " return [r.left + r.width / 2, r.top + r.height / 2]; })()")
        if box is None:
            raise BrowserError(f"no element matches {selector!r}")
        return box[0], box[1]

    def _mouse(self, kind: str, x: float, y: float, buttons: int) -> None:
        self.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left",
                                               "buttons": buttons, "clickCount": 1})

    def click(self, selector: str) -> None:
        """Press and release the left button on an element."""
        x, y = self.center(selector)
        self._mouse("mouseMoved", x, y, 0)
        self._mouse("mousePressed", x, y, 1)
        self._mouse("mouseReleased", x, y, 0)

    def drag(self, start: tuple[float, float], end: tuple[float, float], *, steps: int = 8) -> None:
        """Press at ``start``, move in ``steps`` to ``end`` with the button held, release."""
        self._mouse("mouseMoved", *start, 0)
        self._mouse("mousePressed", *start, 1)
        for k in range(1, steps + 1):
            t = k / steps
            self._mouse("mouseMoved", start[0] + t * (end[0] - start[0]), start[1] + t * (end[1] - start[1]), 1)
        self._mouse("mouseReleased", *end, 0)

    def press(self, key: str, code: int, *, times: int = 1) -> None:
        """Press and release a key ``times`` times (e.g. 'ArrowRight', 39) in the focused element."""
        text = {"Enter": "\r"}.get(key)  # keys that type a character also send it (Enter submits)
        for _ in range(times):
            down = {"type": "keyDown", "text": text} if text else {"type": "rawKeyDown"}
            for event in (down, {"type": "keyUp"}):
                self.send("Input.dispatchKeyEvent", {**event, "key": key, "code": key, "windowsVirtualKeyCode": code})

    def type_text(self, text: str) -> None:
        """Type ``text`` into the focused element as key events."""
        for char in text:
            self.send("Input.dispatchKeyEvent", {"type": "char", "text": char})

    def screenshot(self, path: str, *, full_page: bool = True) -> None:
        """Write a PNG of the page (the whole document when ``full_page``)."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            size = self.evaluate("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
            self.evaluate("window.scrollTo(0, 0)")
            params.update(captureBeyondViewport=True,
                          clip={"x": 0, "y": 0, "width": size[0], "height": size[1], "scale": 1})
        data = self.send("Page.captureScreenshot", params)["data"]
        with open(path, "wb") as handle:
            handle.write(base64.b64decode(data))

    def close(self) -> None:
        try:
            if self._proc.poll() is None:
                try:
                    self._call("Browser.close")
                except (BrowserError, OSError):
                    pass
                try:
                    self._proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait(timeout=5)
        finally:
            for fd in (self._to_child, self._from_child):
                try:
                    os.close(fd)
                except OSError:
                    pass
            if self._proc.stderr is not None:
                self._proc.stderr.close()
            shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _above(fd: int, low: int) -> int:
    """A duplicate of ``fd`` numbered >= ``low`` (inheritable), so dup2 onto 3 and 4 is safe."""
    import fcntl

    new = fcntl.fcntl(fd, fcntl.F_DUPFD, low)
    os.set_inheritable(new, True)
    return new

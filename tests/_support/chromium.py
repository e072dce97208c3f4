"""A minimal headless-Chromium driver over the DevTools protocol, for the docs tests.

Chromium is started with ``--remote-debugging-pipe``: protocol messages are JSON objects,
each terminated by a NUL byte, written to the browser's file descriptor 3 and read from its
descriptor 4. That needs nothing beyond the standard library (no websocket client).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

#: Names of the Chromium executable, in the order they are looked up on PATH.
EXECUTABLES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

#: Flags for a quiet, offline, throw-away browser (a fresh profile is added per start).
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--remote-debugging-pipe",
)

_PAGE_STATE = """
new Promise((resolve) => {
  const report = () => {
    const images = Array.from(document.images).map((img) => ({
      src: img.getAttribute("src"), complete: img.complete, width: img.naturalWidth,
    }));
    const stylesheets = document.styleSheets.length;
    const fields = Array.from(document.querySelectorAll("dl.field-list > dt"))
      .map((dt) => dt.textContent.trim().replace(/:$/, ""));
    const params = Array.from(
      document.querySelectorAll("dl.field-list > dd dt, dl.field-list > dd strong")
    ).map((e) => e.textContent.trim());
    const header = document.querySelector("header");
    resolve(JSON.stringify({
      title: document.title,
      h1: (document.querySelector("h1") || {textContent: ""}).textContent.trim(),
      images, stylesheets, fields, params,
      header_position: header ? getComputedStyle(header).position : null,
      text_length: document.body.innerText.length,
    }));
  };
  const settle = () => Promise.all(Array.from(document.images).map((img) =>
    img.complete ? null : new Promise((r) => { img.onload = r; img.onerror = r; })
  )).then(report);
  if (document.readyState === "complete") settle();
  else window.addEventListener("load", settle);
})
"""


def _high_fd(fd: int) -> int:
    import fcntl

    high = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return high


def find_chromium() -> str | None:
    """Path of a Chromium executable on PATH, or None."""
    for name in EXECUTABLES:
        path = shutil.which(name)
        if path:
            return path
    return None


class DevToolsError(RuntimeError):
    """The browser answered a protocol command with an error, or did not answer."""


class Chromium:
    """A headless Chromium process, driven through its DevTools pipe.

    Use as a context manager; :meth:`page_state` opens a URL in a new tab and returns what
    was rendered.
    """

    def __init__(self, executable: str, *, timeout: float = 60.0) -> None:
        self.timeout = timeout
        self._profile = tempfile.mkdtemp(prefix="rest_fair_chromium_")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # move the child's ends above 4, so that dup2 onto 3 and 4 cannot clobber them
        to_browser_r, from_browser_w = (_high_fd(to_browser_r), _high_fd(from_browser_w))
        # the child reads commands on fd 3 and writes replies on fd 4
        self._process = subprocess.Popen(
            [executable, *FLAGS, f"--user-data-dir={self._profile}", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(3, 4),
            preexec_fn=lambda: (os.dup2(to_browser_r, 3), os.dup2(from_browser_w, 4)),
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._next_id = 0
        self._buffer = b""

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Stop the browser and delete its profile."""
        try:
            self.send("Browser.close")
        except (DevToolsError, OSError):
            pass
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self._profile, ignore_errors=True)

    def send(self, method: str, session: str | None = None, **params: Any) -> dict:
        """Send one protocol command and return its ``result``."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise DevToolsError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def _read(self, deadline: float) -> dict:
        import select

        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or self._process.poll() is not None:
                raise DevToolsError("Chromium did not answer (it exited or timed out).")
            ready, _, _ = select.select([self._from_browser], [], [], left)
            if ready:
                chunk = os.read(self._from_browser, 1 << 16)
                if not chunk:
                    raise DevToolsError("Chromium closed its DevTools pipe.")
                self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def page_state(
        self,
        url: str,
        *,
        screenshot: str | Path | None = None,
        width: int = 1280,
        height: int = 900,
    ) -> dict[str, Any]:
        """Open ``url`` in a new tab, wait for it and its images, and describe the page.

        Returns
        -------
        dict
            ``title``, ``h1``, ``images`` (``src``, ``complete``, ``width`` = naturalWidth,
            0 for an image that did not load), ``stylesheets`` (style sheets of the document),
            ``fields`` (numpydoc field lists: "Parameters", "Returns", ...), ``params``
            (the names in them), ``header_position`` (the computed CSS position of the
            page header: a theme's style sheet makes it sticky), ``text_length``.
        """
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        try:
            self.send("Emulation.setDeviceMetricsOverride", session, width=width,
                      height=height, deviceScaleFactor=1, mobile=False)
            self.send("Page.enable", session)
            self.send("Page.navigate", session, url=url)
            # navigation is asynchronous: wait until the new document is the one evaluated
            deadline = time.monotonic() + self.timeout
            while True:
                href = self.send("Runtime.evaluate", session, expression="location.href",
                                 returnByValue=True)["result"].get("value")
                if href and href != "about:blank":
                    break
                if time.monotonic() > deadline:
                    raise DevToolsError(f"{url} did not start loading.")
                time.sleep(0.05)
            result = self.send("Runtime.evaluate", session, expression=_PAGE_STATE,
                               awaitPromise=True, returnByValue=True)
            if "exceptionDetails" in result:
                raise DevToolsError(f"page script failed: {result['exceptionDetails']}")
            state = json.loads(result["result"]["value"])
            if screenshot is not None:
                import base64

                data = self.send("Page.captureScreenshot", session, format="png")["data"]
                Path(screenshot).write_bytes(base64.b64decode(data))
            return state
        finally:
            self.send("Target.closeTarget", targetId=target)

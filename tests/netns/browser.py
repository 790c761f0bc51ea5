"""A real browser for the tests: Debian's headless Chromium, driven over the
DevTools protocol on a pipe (--remote-debugging-pipe: commands on its fd 3,
answers on its fd 4, each a JSON message ended by a NUL byte). A pipe, not a
debugging port, so the browser can run inside a lab namespace (`ip netns
exec`), where lbd's HTTP endpoint listens on that namespace's loopback, while
the test drives it from outside."""
from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import subprocess
import time


class Browser:
    def __init__(self, netns: str, profile_dir: str, width: int = 412, height: int = 915):
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def fds_3_and_4():
            # out of the way first: either pipe end may itself be fd 3 or 4
            high_r = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 100)
            high_w = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 100)
            os.dup2(high_r, 3)  # dup2 leaves the copies open across exec
            os.dup2(high_w, 4)

        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, "chromium", "--headless", "--no-sandbox", "--disable-gpu",
             "--remote-debugging-pipe", f"--user-data-dir={profile_dir}", "--no-first-run",
             f"--window-size={width},{height}", "about:blank"],
            preexec_fn=fds_3_and_4, close_fds=False,  # every other fd of ours is close-on-exec
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.session: str | None = None

    def call(self, method: str, params: dict | None = None, timeout: float = 30, session: bool = True):
        """Send one command (to the page's session once opened) and wait for its answer."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session and self.session:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                answer = json.loads(raw)
                if answer.get("id") == self._next_id:
                    if "error" in answer:
                        raise RuntimeError(f"{method}: {answer['error']}")
                    return answer["result"]
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                raise TimeoutError(f"{method}: no answer from chromium in {timeout}s")
            chunk = os.read(self._from_browser, 65536)
            if not chunk:
                raise RuntimeError(f"{method}: chromium closed its pipe (exit {self.proc.poll()})")
            self._buffer += chunk

    def open(self, url: str) -> None:
        """A page of its own, attached to, at `url`."""
        target = self.call("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True},
                                 session=False)["sessionId"]
        self.call("Page.enable")
        self.call("Page.navigate", {"url": url})

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (JSON-able)."""
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def press(self, key: str, key_code: int, text: str = "") -> None:
        """One key, down and up, as the keyboard sends it (`text`: what it
        types, e.g. "\r" for Enter, which is what activates a button)."""
        down = {"type": "keyDown", "key": key, "code": key, "windowsVirtualKeyCode": key_code}
        if text:
            down["text"] = text
        self.call("Input.dispatchKeyEvent", down)
        self.call("Input.dispatchKeyEvent", {"type": "keyUp", "key": key, "code": key,
                                             "windowsVirtualKeyCode": key_code})

    def screenshot(self, path: str) -> None:
        data = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.call("Browser.close", session=False, timeout=5)
        except (RuntimeError, TimeoutError, OSError):
            pass
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(10)
            os.close(self._to_browser)
            os.close(self._from_browser)

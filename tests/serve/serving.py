"""Helpers of the rung-serve tests: a free port, bounded polling, uvicorn in a thread."""

from __future__ import annotations

import socket
import threading
import time

API_KEY = "serve-test-key-123"
NAME = "tiny"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, attempts: int = 200) -> None:
    """Poll `url` until it answers (bounded attempts, not a time limit)."""
    import urllib.request

    for _ in range(attempts):
        try:
            with urllib.request.urlopen(url) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"{url} never answered")


class ServerThread:
    """uvicorn serving `app` on a free port in a daemon thread; `stop()` shuts it down."""

    def __init__(self, app) -> None:
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        wait_for(self.url + "/health")
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join()

"""orsbox as a real server process, for tests that signal, kill or restart it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import aiohttp
import httpx

from .run import ADMIN_KEY, API_KEY, AUTH

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OrsboxProcess:
    """`python -m orsbox.cli serve` on a free loopback port, logging to a file."""

    def __init__(self, *, state_dir: Path, node_id: str, log_path: Path, args: tuple[str, ...] = (),
                 port: int | None = None, env: dict[str, str] | None = None) -> None:
        self.state_dir, self.node_id, self.log_path, self.args = state_dir, node_id, log_path, args
        self.env = env or {}
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self, timeout: float = 60) -> OrsboxProcess:
        env = {**os.environ, "ORSBOX_STATE_DIR": str(self.state_dir), "ORSBOX_NODE_ID": self.node_id,
               "ORSBOX_API_KEYS": API_KEY, "ORSBOX_ADMIN_KEYS": ADMIN_KEY, "ORSBOX_PULL_IMAGES": "0", **self.env}
        self._log = self.log_path.open("ab")
        command = [sys.executable, "-m", "orsbox.cli", "serve", "--port", str(self.port), *self.args]
        self.proc = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=self._log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"orsbox exited: {self.log()[-3000:]}"
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"orsbox did not become healthy: {self.log()[-3000:]}")

    def client(self, **session: object) -> aiohttp.ClientSession:
        """A client session of this server that sends the test key."""
        return aiohttp.ClientSession(self.url, headers=AUTH, **session)  # type: ignore[arg-type]

    def signal(self, signum: int, timeout: float = 60) -> int:
        assert self.proc is not None
        self.proc.send_signal(signum)
        self.proc.wait(timeout=timeout)
        self._close_log()
        return self.proc.returncode

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._close_log()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

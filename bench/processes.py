"""The processes a benchmark measures: the real worker, the Faust passthrough and the bare aiokafka loop.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from streamrec.config import Settings


@dataclass
class BenchProcess:
    """A worker-like subprocess with a Faust web server (``/health``)."""

    name: str
    argv: list[str]
    settings: Settings
    log_path: Path
    worker_id: str
    proc: subprocess.Popen | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def worker(cls, settings: Settings, log_path: Path, worker_id: str = "bench-w1") -> "BenchProcess":
        return cls("worker", [sys.executable, "-m", "streamrec", "--log-level", "warning", "worker"], settings, log_path, worker_id)

    @classmethod
    def passthrough(cls, settings: Settings, log_path: Path, worker_id: str = "bench-pass") -> "BenchProcess":
        return cls("passthrough", [sys.executable, "-m", "streamrec.bench.passthrough"], settings, log_path, worker_id)

    @classmethod
    def bare_loop(cls, settings: Settings, log_path: Path, worker_id: str = "bench-bare") -> "BenchProcess":
        return cls("bare", [sys.executable, "-m", "streamrec.bench.bare_loop"], settings, log_path, worker_id)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, *, need_model: bool = False, wait_s: float = 180.0) -> "BenchProcess":
        env = {**os.environ, **self.settings.to_env(), "STREAMREC_WORKER_ID": self.worker_id, **self.extra_env}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as handle:
            self.proc = subprocess.Popen(self.argv, env=env, stdout=handle, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            health = self.health()
            if health.get("kafka") and (not need_model or health.get("model")):
                return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"{self.name} not healthy after {wait_s:.0f}s:\n{self.log_tail()}")

    def health(self) -> dict[str, Any]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.settings.web_port}/health", timeout=2) as resp:
                return orjson.loads(resp.read())
        except urllib.error.HTTPError as exc:
            try:
                return orjson.loads(exc.read())
            except orjson.JSONDecodeError:
                return {}
        except (OSError, orjson.JSONDecodeError):
            return {}

    def metrics_text(self) -> str:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.settings.web_port}/metrics", timeout=5) as resp:
                return resp.read().decode()
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 60.0) -> None:
        if not self.alive():
            return
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

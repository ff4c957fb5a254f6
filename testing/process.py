"""A streamrec process run as a child — the worker, or a worker-like benchmark loop — with its log in a file.

It is waited for through its ``/health`` (never a fixed sleep) and read
through ``/metrics``; both are served on a port of its own
(``STREAMREC_WEB_PORT``), so several can run side by side.
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
from streamrec.testing.isolation import free_port


class ServiceFailed(RuntimeError):
    """The process exited, or was not healthy in time; the message ends with its log's tail."""


@dataclass
class ServiceProcess:
    """A child process with the worker's web endpoints (``/health``, ``/metrics``)."""

    name: str
    argv: list[str]
    settings: Settings
    log_path: Path
    worker_id: str = "w1"
    web_port: int = field(default_factory=free_port)
    extra_env: dict[str, str] = field(default_factory=dict)
    proc: "subprocess.Popen[bytes] | None" = None

    @classmethod
    def worker(cls, settings: Settings, log_path: Path, worker_id: str = "w1", *, log_level: str = "info",
               module: str = "streamrec", extra_env: dict[str, str] | None = None) -> "ServiceProcess":
        """``python -m streamrec worker`` (``module`` names another entry point, e.g. a worker with a planted fault)."""
        argv = [sys.executable, "-m", module, "--log-level", log_level, "worker"]
        return cls("worker", argv, settings, log_path, worker_id, extra_env=dict(extra_env or {}))

    @classmethod
    def module(cls, name: str, module: str, settings: Settings, log_path: Path, worker_id: str) -> "ServiceProcess":
        """``python -m <module>``: a benchmark loop that serves ``/health`` like the worker."""
        return cls(name, [sys.executable, "-m", module], settings, log_path, worker_id)

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was never started"
        return self.proc.pid

    def start(self, *, need_model: bool = False, wait_s: float = 90.0) -> "ServiceProcess":
        """Start and wait until ``/health`` says Kafka (and, with ``need_model``, the model) is up."""
        env = {**os.environ, **self.settings.to_env(), "STREAMREC_WORKER_ID": self.worker_id,
               "STREAMREC_WEB_PORT": str(self.web_port), **self.extra_env}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as handle:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(self.argv, env=env, stdout=handle, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServiceFailed(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            health = self.health()
            if health.get("kafka") and (not need_model or health.get("model")):
                return self
            time.sleep(0.5)
        self.stop()
        raise ServiceFailed(f"{self.name} not healthy after {wait_s:.0f}s:\n{self.log_tail()}")

    def health(self) -> dict[str, Any]:
        """``/health``'s JSON (also when it answers 503); ``{}`` when it does not answer."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/health", timeout=2) as resp:
                return orjson.loads(resp.read())
        except urllib.error.HTTPError as exc:
            try:
                return orjson.loads(exc.read())
            except orjson.JSONDecodeError:
                return {}
        except (OSError, orjson.JSONDecodeError):
            return {}

    def health_status(self) -> int:
        """The HTTP status of ``/health`` (200 healthy, 503 not); 0 when it does not answer."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/health", timeout=2) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return 0

    def metrics(self) -> str:
        """``/metrics`` in Prometheus' text format; empty when it does not answer."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/metrics", timeout=5) as resp:
                return resp.read().decode()
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: a crash, with no shutdown hooks."""
        if self.proc is not None and self.alive():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait for a graceful stop; its exit code (SIGKILL after ``timeout``, then -9)."""
        if self.proc is None:
            return 0
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def stop(self, timeout: float = 60.0) -> None:
        """:meth:`terminate`, for callers that do not look at the exit code."""
        self.terminate(timeout)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

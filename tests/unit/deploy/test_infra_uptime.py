"""How long a server this project started has been running (the demo's note on freshly started servers)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from streamrec.config import Settings
from streamrec.deploy import infra


def _settings(tmp_path: Path) -> Settings:
    return Settings().with_overrides(state_dir=tmp_path)


def test_a_server_this_project_did_not_start_has_no_uptime(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    assert infra.uptime_s(settings, "kafka") is None  # no pid file
    infra.server_dir(settings, "kafka").mkdir(parents=True)
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (infra.server_dir(settings, "kafka") / "server.pid").write_text(str(stranger.pid))
        assert infra.uptime_s(settings, "kafka") is None, "a pid without our marker is not our server"
    finally:
        stranger.kill()
        stranger.wait()


def test_the_uptime_of_our_server_counts_from_its_start(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    infra.server_dir(settings, "cassandra").mkdir(parents=True)
    # Any process whose command line carries the marker passes for the server we started.
    ours = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", infra._marker(settings, "cassandra")])
    try:
        (infra.server_dir(settings, "cassandra") / "server.pid").write_text(str(ours.pid))
        time.sleep(1.5)
        uptime = infra.uptime_s(settings, "cassandra")
        assert uptime is not None and 1.0 <= uptime < 20.0
    finally:
        ours.kill()
        ours.wait()
    assert infra.uptime_s(settings, "cassandra") is None, "gone"

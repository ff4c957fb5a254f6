"""Where a process spends its CPU: py-spy records, frames sorted into categories, a flame graph.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable

from streamrec.bench.report import format_table


PROFILE_CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    # py-spy shortens paths (``stream/state/cassandra.py``, ``runtime.py``); Cython-compiled driver
    # code (cassandra.cluster) has no frames of its own: its cost shows in the calling line.
    ("ONNX Runtime (encoder run)", ("onnxruntime/",)),
    ("encoder wrapper / features", ("onnx/runtime.py", "(runtime.py:", "models/features.py", "numpy/")),
    ("Cassandra driver (IO thread)", ("cassandra/",)),
    ("Cassandra store calls (ours + driver's Cython request path)", ("stream/state/",)),
    ("event parsing / validation", ("stream/events.py",)),
    ("recommendation build / JSON", ("stream/recommendation.py",)),
    ("window merge / encode", ("stream/window.py",)),
    ("processor logic", ("stream/processor.py",)),
    ("metrics (prometheus_client)", ("prometheus_client/",)),
    ("Kafka client (aiokafka)", ("aiokafka/", "kafka/")),
    ("Faust / mode", ("faust/", "mode/")),
    ("asyncio event loop (scheduling, self-pipe wake-ups, epoll)", ("asyncio/", "uvloop/", "selectors.py")),
    ("threading / concurrent", ("threading.py", "concurrent/", "queue.py")),
)


def classify_frame(frame: str) -> str | None:
    for name, patterns in PROFILE_CATEGORIES:
        if any(p in frame for p in patterns):
            return name
    return None


def summarise_collapsed(lines: Iterable[str], top: int = 15) -> dict[str, Any]:
    """Category shares (leaf-most classified frame) and top self/inclusive functions of py-spy raw output."""
    categories: dict[str, int] = {}
    self_time: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in lines:
        line = line.rstrip("\n")
        if not line or " " not in line:
            continue
        stack, _, count_text = line.rpartition(" ")
        try:
            count = int(count_text)
        except ValueError:
            continue
        frames = stack.split(";")
        total += count
        category = next((c for c in (classify_frame(f) for f in reversed(frames)) if c), "other (interpreter, stdlib)")
        categories[category] = categories.get(category, 0) + count
        leaf = frames[-1]
        self_time[leaf] = self_time.get(leaf, 0) + count
        for f in set(frames):
            inclusive[f] = inclusive.get(f, 0) + count

    def pct(n: int) -> float:
        return round(100.0 * n / total, 1) if total else 0.0

    return {
        "samples": total,
        "categories_pct": {k: pct(v) for k, v in sorted(categories.items(), key=lambda kv: -kv[1])},
        "top_self_pct": {k: pct(v) for k, v in sorted(self_time.items(), key=lambda kv: -kv[1])[:top]},
        "top_inclusive_pct": {k: pct(v) for k, v in sorted(inclusive.items(), key=lambda kv: -kv[1])[:top * 2]},
    }


def py_spy_profile(pid: int, out_dir: Path, seconds: float, name: str = "profile", rate: int = 100) -> dict[str, Any]:
    """Record ``pid`` with py-spy (non-blocking): collapsed stacks → categories, then a flame graph SVG."""
    import shutil

    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(exe).exists():
        return {"error": "py-spy is not installed (pip install py-spy)"}
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = out_dir / f"{name}.txt"
    svg = out_dir / f"{name}.svg"
    base = [exe, "record", "--pid", str(pid), "--nonblocking", "--rate", str(rate)]
    proc = subprocess.run([*base, "--duration", str(int(seconds)), "--format", "raw", "-o", str(raw)],
                          capture_output=True, text=True, timeout=seconds + 60)
    if proc.returncode != 0 or not raw.exists():
        return {"error": f"py-spy failed: {proc.stderr.strip()[-500:]}"}
    result = summarise_collapsed(raw.read_text().splitlines())
    result["raw"] = str(raw)
    svg_proc = subprocess.run([*base, "--duration", str(max(3, int(seconds // 2))), "--format", "flamegraph", "-o", str(svg)],
                              capture_output=True, text=True, timeout=seconds + 60)
    if svg_proc.returncode == 0 and svg.exists():
        result["flamegraph"] = str(svg)
    return result


def profile_table(profile: dict[str, Any]) -> str:
    rows = [(k, v) for k, v in profile.get("categories_pct", {}).items()]
    return format_table(rows, ("where the worker's CPU samples are (leaf-most known frame)", "%"))

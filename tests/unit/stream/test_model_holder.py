"""The model holder: any failure of a model version is a refusal, retried after a backoff, never a crash."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from streamrec.errors import ModelError
from streamrec.stream.model_holder import RETRY_FIRST_S, ModelHolder, Refusal


class Fail(Exception):
    """Like onnxruntime's pybind11 exceptions: derives from Exception only (not RuntimeError)."""


class FakeModel:
    def __init__(self, path: Path) -> None:
        self.version = int(path.name[1:])
        self.artifact = type("A", (), {"path": path})()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def wait_loaded(holder: ModelHolder) -> bool:
    async def until_swapped() -> bool:
        for _ in range(200):
            if await holder.maybe_swap():
                return True
            if holder.last_refusal is not None and holder._pending is None:  # noqa: SLF001
                return False
            await asyncio.sleep(0.01)
        raise AssertionError("the load never finished")

    return asyncio.run(until_swapped())


def test_an_onnx_runtime_error_in_a_background_load_is_a_refusal_and_the_current_version_serves() -> None:
    broken = {"v2"}
    refusals: list[Refusal] = []

    def loader(path: Path) -> FakeModel:
        if path.name in broken:
            raise Fail("[ONNXRuntimeError] : 1 : FAIL : Load model failed")
        return FakeModel(path)

    clock = Clock()
    holder = ModelHolder(loader, clock=clock, on_refused=refusals.append)
    holder.load_now(Path("m/v1"))
    holder.request(Path("m/v2"))
    assert wait_loaded(holder) is False
    assert holder.version == 1 and len(refusals) == 1 and "FAIL" in refusals[0].reason

    # Refused: not retried within the backoff, retried after it (the file may have been mid-copy).
    assert not holder.wants(Path("m/v2"))
    clock.now += RETRY_FIRST_S + 1
    assert holder.wants(Path("m/v2"))
    broken.clear()
    holder.request(Path("m/v2"))
    assert wait_loaded(holder) is True and holder.version == 2 and holder.last_refusal is None


def test_backoff_grows_with_each_refusal_of_the_same_version() -> None:
    def loader(path: Path) -> FakeModel:
        raise Fail("InvalidGraph")

    clock = Clock()
    holder = ModelHolder(loader, clock=clock)
    waits = []
    for _ in range(3):
        holder.request(Path("m/v3"))
        wait_loaded(holder)
        refusal = holder.refused["m/v3"]
        waits.append(refusal.retry_at - clock.now)
        clock.now = refusal.retry_at
    assert waits == [RETRY_FIRST_S, 2 * RETRY_FIRST_S, 4 * RETRY_FIRST_S]


def test_a_failing_start_up_load_is_a_model_error_with_the_reason() -> None:
    def loader(path: Path) -> FakeModel:
        raise Fail("InvalidProtobuf")

    holder = ModelHolder(loader)
    with pytest.raises(ModelError, match="InvalidProtobuf"):
        holder.load_now(Path("m/v1"))
    assert holder.current is None and holder.last_refusal is not None

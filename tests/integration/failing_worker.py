"""A real `streamrec worker` with an injected bug: the agent raises after N acknowledged batches.

The failure is raised where the agent calls ``ModelHolder.maybe_swap``,
outside the batch's own ``try`` (after the batch was acknowledged), which is
where a bug once let Faust restart the agent and acknowledge records it never
processed. Run as ``python -m tests.integration.failing_worker`` with
``FAIL_AFTER_BATCHES`` set.
"""

from __future__ import annotations

import os
import sys

from streamrec.stream.model_holder import ModelHolder

_fail_after = int(os.environ["FAIL_AFTER_BATCHES"])
_calls = 0
_original = ModelHolder.maybe_swap


async def _failing_maybe_swap(self: ModelHolder) -> bool:
    global _calls
    if sys._getframe(1).f_code.co_name != "ingest":  # noqa: SLF001 - only the agent's call fails, not the idle timer's
        return await _original(self)
    _calls += 1
    if _calls > _fail_after:
        raise RuntimeError(f"injected failure after {_fail_after} batches")
    return await _original(self)


ModelHolder.maybe_swap = _failing_maybe_swap  # type: ignore[method-assign]

if __name__ == "__main__":
    from streamrec.cli import main

    sys.argv = ["streamrec", "--log-level", "info", "worker"]
    main()

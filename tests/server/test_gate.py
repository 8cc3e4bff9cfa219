"""The evaluation gate both servers queue their FHE work through (``fhe_server.runtime.FHEGate``).

No keys, no server: the gate's places, its waiting room and its refusal, as the single-key
server's thread jobs (``run``) and the three-party server's worker-process evaluations
(``slot``) meet them.
"""

from __future__ import annotations

import anyio
import pytest

from fhe_server.errors import ServerBusyError
from fhe_server.runtime import FHEGate


def test_slots_queue_then_refuse_beyond_the_waiting_room() -> None:
    async def scenario() -> list[str]:
        gate = FHEGate(max_concurrent=1, max_waiting=1)
        events: list[str] = []
        release = anyio.Event()

        async def hold(name: str) -> None:
            async with gate.slot():
                events.append(f"{name} in")
                await release.wait()
            events.append(f"{name} out")

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(hold, "first")
            await anyio.sleep(0.01)
            tasks.start_soon(hold, "second")  # waits for the place
            await anyio.sleep(0.01)
            assert gate.admitted == 2 and events == ["first in"]
            with pytest.raises(ServerBusyError) as refused:
                async with gate.slot():
                    pass  # pragma: no cover - refused before
            assert refused.value.retry_after >= 1
            release.set()
        assert gate.admitted == 0
        return events

    # One place: the second job ran only once the first had left it.
    assert anyio.run(scenario) == ["first in", "first out", "second in", "second out"]


def test_run_goes_through_the_same_places() -> None:
    async def scenario() -> int:
        gate = FHEGate(max_concurrent=1, max_waiting=0)
        return await gate.run(lambda: 41 + 1)

    assert anyio.run(scenario) == 42

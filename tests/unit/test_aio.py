"""aio.Deadlines: never early, at most a tick late, cancellable, cheap."""

from __future__ import annotations

import asyncio
import functools

from meshgate.aio import DEADLINE_MAX_TICK, Deadlines, _tick


def test_tick_is_a_power_of_two_below_a_64th_of_the_delay() -> None:
    for delay in (0.01, 0.3, 5.0, 60.0, 3600.0):
        tick = _tick(delay)
        assert tick <= delay / 64 or tick == DEADLINE_MAX_TICK
        assert tick <= DEADLINE_MAX_TICK
        assert (tick * 2**40).is_integer()
    assert _tick(3600.0) == DEADLINE_MAX_TICK


async def test_calls_run_in_order_never_early_and_at_most_a_tick_late() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines()
    start = loop.time()
    ran: list[tuple[float, float]] = []

    def note(delay: float) -> None:
        ran.append((delay, loop.time() - start))

    for delay in (0.25, 0.05, 0.15, 0.05):
        deadlines.call_later(delay, functools.partial(note, delay))
    cancelled = deadlines.call_later(0.1, lambda: ran.append((-1.0, 0.0)))
    cancelled.cancel()
    cancelled.cancel()  # twice is fine
    assert len(deadlines) == 4
    await asyncio.sleep(0.4)
    assert [d for d, _ in ran] == [0.05, 0.05, 0.15, 0.25]
    for delay, at in ran:
        assert delay - 0.002 <= at <= delay + _tick(delay) + 0.05  # 0.05: a busy test machine
    assert len(deadlines) == 0


async def test_a_callback_may_cancel_another_of_its_bucket_and_add_more() -> None:
    deadlines = Deadlines()
    ran: list[str] = []
    later: list[object] = []

    def first() -> None:
        ran.append("first")
        second.cancel()
        later.append(deadlines.call_later(0.02, lambda: ran.append("third")))

    deadlines.call_later(0.05, first)
    second = deadlines.call_later(0.05, lambda: ran.append("second"))
    await asyncio.sleep(0.2)
    assert ran == ["first", "third"]


async def test_a_failing_callback_is_reported_and_the_others_still_run() -> None:
    loop = asyncio.get_running_loop()
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    deadlines = Deadlines()
    ran: list[int] = []

    def boom() -> None:
        raise ValueError("boom")

    deadlines.call_later(0.02, boom)
    deadlines.call_later(0.02, lambda: ran.append(1))
    await asyncio.sleep(0.1)
    loop.set_exception_handler(None)
    assert ran == [1]
    assert isinstance(errors[0]["exception"], ValueError)


async def test_a_shorter_delay_added_later_rearms_the_loop_timer() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines()
    ran: list[float] = []
    start = loop.time()
    deadlines.call_later(10.0, lambda: ran.append(10.0))
    deadlines.call_later(0.05, lambda: ran.append(loop.time() - start))
    await asyncio.sleep(0.15)
    assert len(ran) == 1
    assert ran[0] < 0.12
    assert len(deadlines) == 1

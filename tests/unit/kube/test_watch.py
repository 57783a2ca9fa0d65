"""kube/watch.py: the informer against a scripted client layer, and the Coalescer.

`Scripted` plays LIST answers and WATCH streams in order (events, a normal
end, 410, 429 with Retry-After, connection errors) and records the
resourceVersion each WATCH asked for; sleeps are recorded, not slept, so every
back-off is asserted exactly. When the script runs out, the next WATCH hangs
and `idle` is set: the test looks at the informer and cancels it.

The last tests run the informer over the real client against the fake API
server (tests/kube/fake_apiserver.py) while objects change, watches are
dropped and the history is compacted, and check that the store converges.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from meshgate import aio
from meshgate.kube.client import (
    CONFIGMAP,
    SERVICE,
    Forbidden,
    Gone,
    Kind,
    KubeClient,
    Retryable,
    WatchEvent,
)
from meshgate.kube.watch import Coalescer, Informer, Store
from tests.kube.fake_apiserver import FakeApiServer

CLOSE = "close"  # the server ends the stream normally
HANG = "hang"  # the stream stays open with nothing on it


def svc(name: str, rv: str, namespace: str = "ns", **spec: Any) -> dict[str, Any]:
    return {
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "resourceVersion": rv},
        "spec": spec,
    }


def ev(kind: str, obj: dict[str, Any]) -> WatchEvent:
    return WatchEvent(kind, obj)


def bookmark(rv: str) -> WatchEvent:
    return WatchEvent("BOOKMARK", {"kind": "Service", "metadata": {"resourceVersion": rv}})


ListStep = tuple[list[dict[str, Any]], str] | Exception
WatchStep = WatchEvent | Exception | str
Steps = list[WatchStep]


@dataclass
class Scripted:
    lists: list[ListStep] = field(default_factory=list)
    watches: list[list[WatchStep]] = field(default_factory=list)
    list_calls: list[tuple[str | None, str | None]] = field(default_factory=list)
    watch_rvs: list[str] = field(default_factory=list)
    watch_args: list[dict[str, Any]] = field(default_factory=list)
    closed: int = 0  # streams ended by the informer or the script
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    async def list(
        self,
        kind: Kind,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> tuple[list[dict[str, Any]], str]:
        self.list_calls.append((namespace, label_selector))
        if not self.lists:
            self.idle.set()
            await asyncio.Event().wait()
        step = self.lists.pop(0)
        if isinstance(step, Exception):
            raise step
        items, rv = step
        return [dict(i) for i in items], rv

    def watch(
        self,
        kind: Kind,
        namespace: str | None = None,
        *,
        resource_version: str,
        timeout_seconds: int = 300,
        label_selector: str | None = None,
        bookmarks: bool = True,
    ) -> AsyncGenerator[WatchEvent, None]:
        self.watch_rvs.append(resource_version)
        self.watch_args.append(
            {"timeout": timeout_seconds, "bookmarks": bookmarks, "selector": label_selector}
        )
        steps = self.watches.pop(0) if self.watches else None
        return self._stream(steps)

    async def _stream(self, steps: Steps | None) -> AsyncGenerator[WatchEvent, None]:
        try:
            if steps is None:
                self.idle.set()
                await asyncio.Event().wait()
                return
            for step in steps:
                if isinstance(step, Exception):
                    raise step
                if step == CLOSE:
                    return
                if step == HANG:
                    await asyncio.Event().wait()
                assert isinstance(step, WatchEvent)
                yield step
        finally:
            self.closed += 1


class Sleeps:
    """Records the informer's back-off sleeps and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)


class Highest(random.Random):
    """Jitter that always draws the top of the range: the caps themselves."""

    def uniform(self, a: float, b: float) -> float:
        return b


@dataclass
class Run:
    informer: Informer
    script: Scripted
    sleeps: Sleeps
    changes: list[int]


async def run_script(
    script: Scripted, *, rng: random.Random | None = None, limit: float = 5.0, **kw: Any
) -> Run:
    """Run an informer until the script is used up, then stop it."""
    sleeps = Sleeps()
    changes: list[int] = []
    informer = Informer(
        script,
        SERVICE,
        on_change=lambda: changes.append(len(informer.store)),
        rng=rng or random.Random(1),
        sleep=sleeps,
        **kw,
    )
    task = aio.spawn(informer.run(), name="informer under test")
    try:
        async with asyncio.timeout(limit):
            await script.idle.wait()
        await asyncio.sleep(0)
    finally:
        await aio.cancel_and_wait([task])
    return Run(informer, script, sleeps, changes)


def names(store: Store) -> dict[str, str]:
    return {o["metadata"]["name"]: o["metadata"]["resourceVersion"] for o in store.items()}


# ---------------------------------------------------------------- list and watch


async def test_list_then_watch_applies_events() -> None:
    script = Scripted(
        lists=[([svc("a", "5"), svc("b", "7")], "10")],
        watches=[
            [
                ev("ADDED", svc("c", "11")),
                ev("MODIFIED", svc("a", "12", port=81)),
                ev("DELETED", svc("b", "13")),
            ]
        ],
    )
    run = await run_script(script)
    informer = run.informer
    assert informer.synced.is_set()
    assert names(informer.store) == {"a": "12", "c": "11"}
    assert informer.store.get("ns", "a") == svc("a", "12", port=81)
    assert informer.store.get("other", "a") is None
    assert script.watch_rvs == ["10", "13"]  # the second is the one left hanging
    assert script.watch_args[0] == {"timeout": 300, "bookmarks": True, "selector": None}
    # One change for the first LIST, one per event.
    assert run.changes == [2, 3, 3, 2]
    assert (informer.lists, informer.relists, informer.errors, informer.events) == (1, 0, 0, 3)


async def test_watch_starts_from_the_lists_rv_not_the_items() -> None:
    # Items come in key order: the last item's resourceVersion is no start point.
    script = Scripted(lists=[([svc("a", "30"), svc("b", "4")], "31")])
    run = await run_script(script)
    assert script.watch_rvs == ["31"]
    assert run.informer.resource_version == "31"


async def test_rewatch_resumes_from_the_last_rv_and_bookmarks_advance_it() -> None:
    script = Scripted(
        lists=[([svc("a", "5")], "10")],
        watches=[
            [ev("MODIFIED", svc("a", "11")), ev("ADDED", svc("b", "12")), CLOSE],
            [bookmark("20"), CLOSE],
            [bookmark("21"), bookmark("25"), CLOSE],
        ],
    )
    run = await run_script(script)
    assert script.watch_rvs == ["10", "12", "20", "25"]
    assert names(run.informer.store) == {"a": "11", "b": "12"}
    # Bookmarks change nothing in the store: no on_change for them.
    assert run.changes == [1, 1, 2]
    assert run.informer.watch_restarts == 3
    assert run.sleeps.delays == []  # a normal end is not an error: no back-off
    assert script.list_calls == [(None, None)]  # and no relist


async def test_identical_modify_and_unknown_delete_change_nothing() -> None:
    script = Scripted(
        lists=[([svc("a", "5")], "10")],
        watches=[[ev("MODIFIED", svc("a", "5")), ev("DELETED", svc("zz", "11"))]],
    )
    run = await run_script(script)
    assert run.changes == [1]
    assert run.informer.resource_version == "11"


async def test_unknown_event_type_is_skipped(caplog: pytest.LogCaptureFixture) -> None:
    script = Scripted(
        lists=[([], "10")],
        watches=[[ev("SURPRISE", svc("x", "11")), ev("ADDED", svc("a", "12"))]],
    )
    with caplog.at_level(logging.WARNING, logger="meshgate.kube"):
        run = await run_script(script)
    assert names(run.informer.store) == {"a": "12"}
    assert any(r.getMessage() == "kube unknown event" for r in caplog.records)


async def test_namespace_and_selector_are_passed_on() -> None:
    script = Scripted(lists=[([], "1")])
    sleeps = Sleeps()
    informer = Informer(
        script, SERVICE, "team", label_selector="app=web", watch_timeout=60, sleep=sleeps
    )
    task = aio.spawn(informer.run(), name="informer under test")
    async with asyncio.timeout(5):
        await script.idle.wait()
    await aio.cancel_and_wait([task])
    assert script.list_calls == [("team", "app=web")]
    assert script.watch_args == [{"timeout": 60, "bookmarks": True, "selector": "app=web"}]


async def test_cluster_scoped_kind_ignores_namespace() -> None:
    kind = Kind("networking.k8s.io", "v1", "ingressclasses", "IngressClass", namespaced=False)
    informer = Informer(Scripted(), kind, "team")
    assert informer.namespace is None


# ---------------------------------------------------------------- 410: relist


async def test_gone_relists_and_synthesizes_the_deletes_of_the_gap(
    caplog: pytest.LogCaptureFixture,
) -> None:
    script = Scripted(
        lists=[
            ([svc("a", "5"), svc("b", "6"), svc("c", "7")], "10"),
            # While not watching: b and c were deleted, a changed, d was added.
            ([svc("a", "20"), svc("d", "19")], "25"),
        ],
        watches=[[ev("MODIFIED", svc("a", "11")), Gone(410, "Expired", "too old")]],
    )
    with caplog.at_level(logging.INFO, logger="meshgate.kube"):
        run = await run_script(script)
    informer = run.informer
    assert names(informer.store) == {"a": "20", "d": "19"}
    assert script.watch_rvs == ["10", "25"]
    assert run.changes == [3, 3, 2]  # list, modify, relist (one call for the whole diff)
    assert (informer.lists, informer.relists, informer.errors) == (2, 1, 0)
    assert run.sleeps.delays == []  # a relist after 410 is immediate
    relisted = next(r for r in caplog.records if r.getMessage() == "kube relisted")
    assert relisted.fields == {  # type: ignore[attr-defined]
        "kind": "services",
        "resource_version": "25",
        "objects": 2,
        "added": 1,
        "updated": 1,
        "deleted": 2,
    }


async def test_relist_with_no_difference_calls_no_on_change() -> None:
    script = Scripted(
        lists=[([svc("a", "5")], "10"), ([svc("a", "5")], "40")],
        watches=[[Gone(410, "Expired", "")]],
    )
    run = await run_script(script)
    assert run.changes == [1]
    assert script.watch_rvs == ["10", "40"]


async def test_gone_from_the_list_itself_backs_off() -> None:
    script = Scripted(lists=[Gone(410, "Expired", "continue token expired"), ([], "3")])
    run = await run_script(script, rng=Highest())
    assert run.sleeps.delays == [0.5]
    assert run.informer.errors == 1
    assert script.watch_rvs == ["3"]


# ---------------------------------------------------------------- back-off


async def test_backoff_doubles_to_the_cap_and_resets_after_a_list() -> None:
    unavailable = Retryable(503, "ServiceUnavailable", "")
    script = Scripted(
        lists=[*([unavailable] * 6), ([], "10")],
        watches=[
            [Retryable(0, "ConnectError", "refused")],
            [Retryable(0, "ConnectError", "refused")],
            [ev("ADDED", svc("a", "11")), Retryable(0, "ReadError", "reset")],
        ],
    )
    run = await run_script(script, rng=Highest(), backoff_base=0.5, backoff_max=4.0)
    assert run.sleeps.delays == [
        *[0.5, 1.0, 2.0, 4.0, 4.0, 4.0],  # LIST failures: doubling up to backoff_max
        *[0.5, 1.0],  # reset by the LIST; WATCH failures grow again
        0.5,  # reset by the event the third WATCH delivered
    ]
    assert run.informer.errors == 9
    assert run.informer.watch_restarts == 3
    # A failed WATCH is retried from where it was, not by a relist.
    assert script.watch_rvs == ["10", "10", "10", "11"]
    assert run.informer.lists == 1


async def test_backoff_is_full_jitter_from_the_seeded_rng() -> None:
    script = Scripted(lists=[*([Retryable(500, "InternalError", "")] * 5), ([], "1")])
    run = await run_script(script, rng=random.Random(42), backoff_base=0.5, backoff_max=30.0)
    expected_rng = random.Random(42)
    caps = [0.5, 1.0, 2.0, 4.0, 8.0]
    assert run.sleeps.delays == [expected_rng.uniform(0.0, cap) for cap in caps]
    assert all(0.0 <= d <= cap for d, cap in zip(run.sleeps.delays, caps, strict=True))
    assert run.sleeps.delays != caps


async def test_retry_after_is_honoured() -> None:
    script = Scripted(
        lists=[Retryable(429, "TooManyRequests", "", retry_after=5.0), ([], "1")],
        watches=[[Retryable(429, "TooManyRequests", "", retry_after=0.01)]],
    )
    run = await run_script(script, rng=Highest(), backoff_base=0.5)
    # At least Retry-After; the jittered back-off when that is longer.
    assert run.sleeps.delays == [5.0, 0.5]


async def test_other_api_errors_back_off_and_retry(caplog: pytest.LogCaptureFixture) -> None:
    script = Scripted(lists=[Forbidden(403, "Forbidden", "rbac"), ([svc("a", "2")], "3")])
    with caplog.at_level(logging.WARNING, logger="meshgate.kube"):
        run = await run_script(script, rng=Highest())
    assert run.sleeps.delays == [0.5]
    assert names(run.informer.store) == {"a": "2"}
    failed = next(r for r in caplog.records if r.getMessage() == "kube request failed")
    assert failed.levelno == logging.WARNING
    assert failed.fields["status"] == 403  # type: ignore[attr-defined]
    assert failed.fields["request"] == "list"  # type: ignore[attr-defined]


async def test_a_stream_ended_at_once_and_empty_backs_off() -> None:
    script = Scripted(lists=[([], "5")], watches=[[CLOSE], [CLOSE], [bookmark("6"), CLOSE]])
    run = await run_script(script, rng=Highest())
    assert run.sleeps.delays == [0.5, 1.0]  # not after the stream with a bookmark
    assert run.informer.errors == 0
    assert script.watch_rvs == ["5", "5", "5", "6"]


# ---------------------------------------------------------------- inactivity


async def test_inactivity_closes_the_stream_and_rewatches() -> None:
    script = Scripted(
        lists=[([], "5")],
        watches=[[ev("ADDED", svc("a", "6")), HANG], [bookmark("9"), HANG]],
    )
    run = await run_script(script, inactivity=0.05)
    assert script.watch_rvs == ["5", "6", "9"]
    assert run.informer.watch_restarts == 2
    assert script.closed == 3  # both idle streams closed; the third by the cancel
    assert run.sleeps.delays == []


async def test_cancel_closes_the_open_stream() -> None:
    script = Scripted(lists=[([], "5")], watches=[[ev("ADDED", svc("a", "6")), HANG]])
    changed = asyncio.Event()
    informer = Informer(script, SERVICE, on_change=changed.set, sleep=Sleeps())
    task = aio.spawn(informer.run(), name="informer under test")
    async with asyncio.timeout(5):
        while informer.events == 0:
            changed.clear()
            await changed.wait()
    await aio.cancel_and_wait([task])
    assert script.closed == 1
    assert task.cancelled()


async def test_on_change_failure_is_logged_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    script = Scripted(lists=[([], "1")], watches=[[ev("ADDED", svc("a", "2"))]])
    calls = 0

    def broken() -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("consumer bug")

    informer = Informer(script, SERVICE, on_change=broken, sleep=Sleeps())
    task = aio.spawn(informer.run(), name="informer under test")
    async with asyncio.timeout(5):
        await script.idle.wait()
    await aio.cancel_and_wait([task])
    assert calls == 2
    assert names(informer.store) == {"a": "2"}
    assert any(r.getMessage() == "kube on_change failed" for r in caplog.records)


# ---------------------------------------------------------------- store


def test_store_keys_cluster_scoped_objects_by_empty_namespace() -> None:
    store = Store()
    assert store.put({"metadata": {"name": "x"}})
    assert not store.put({"metadata": {"name": "x"}})
    assert store.get(None, "x") == store.get("", "x") == {"metadata": {"name": "x"}}
    assert store.keys() == [("", "x")]
    assert store.replace([{"metadata": {"name": "y"}}]) == (1, 0, 1)
    assert len(store) == 1


# ---------------------------------------------------------------- coalescer


async def test_coalescer_turns_a_burst_into_one_wakeup() -> None:
    coalescer = Coalescer(quiet=0.05, max_delay=1.0)
    loop = asyncio.get_running_loop()
    for _ in range(10):
        coalescer()
    start = loop.time()
    assert await coalescer.wait() == 10
    assert 0.04 <= loop.time() - start < 1.0
    assert not coalescer.pending


async def test_coalescer_waits_for_quiet_but_not_past_max_delay() -> None:
    coalescer = Coalescer(quiet=0.05, max_delay=0.2)
    loop = asyncio.get_running_loop()

    async def chatter(until: float) -> None:
        while loop.time() < until:
            coalescer.notify()
            await asyncio.sleep(0.01)

    start = loop.time()
    task = aio.spawn(chatter(start + 3.0), name="chatter")
    try:
        count = await coalescer.wait()
        took = loop.time() - start
    finally:
        await aio.cancel_and_wait([task])
    assert 0.18 <= took < 1.5  # a steady stream of changes still applies by max_delay
    assert count >= 5


async def test_coalescer_keeps_changes_made_during_a_rebuild() -> None:
    coalescer = Coalescer(quiet=0.01, max_delay=0.5)
    rebuilds: list[int] = []

    async def consumer() -> None:
        while True:
            rebuilds.append(await coalescer.wait())
            coalescer.notify()  # a change that lands while rebuilding
            await asyncio.sleep(0)
            if len(rebuilds) == 2:
                return

    coalescer.notify()
    coalescer.notify()
    async with asyncio.timeout(2):
        await consumer()
    assert rebuilds == [2, 1]


async def test_coalescer_as_on_change_of_an_informer() -> None:
    events: Sequence[WatchStep] = [ev("ADDED", svc(f"s{i}", str(10 + i))) for i in range(20)]
    script = Scripted(lists=[([], "1")], watches=[list(events)])
    coalescer = Coalescer(quiet=0.02, max_delay=1.0)
    informer = Informer(script, SERVICE, on_change=coalescer, sleep=Sleeps())
    task = aio.spawn(informer.run(), name="informer under test")
    try:
        async with asyncio.timeout(5):
            await script.idle.wait()
            count = await coalescer.wait()
    finally:
        await aio.cancel_and_wait([task])
    assert count == 21  # the first LIST and 20 events, one wake-up
    assert len(informer.store) == 20


# ---------------------------------------------------------------- against the fake API server


def configmap(namespace: str, name: str, value: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": {"v": value},
    }


def versions(objects: Sequence[dict[str, Any]]) -> dict[tuple[str, str], str]:
    return {
        (o["metadata"].get("namespace", ""), o["metadata"]["name"]): o["metadata"][
            "resourceVersion"
        ]
        for o in objects
    }


async def eventually(condition: Callable[[], bool], within: float = 5.0) -> None:
    for _ in range(int(within / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not met in time")


async def converged(informer: Informer, api: FakeApiServer, within: float = 5.0) -> None:
    """Wait until the store holds exactly the server's objects, at their versions."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while versions(informer.store.items()) != versions(api.objects("ConfigMap")):
        if loop.time() > deadline:
            store, server = versions(informer.store.items()), versions(api.objects("ConfigMap"))
            missing = server.keys() - store.keys()
            extra = store.keys() - server.keys()
            raise AssertionError(f"not converged: missing {missing}, not deleted {extra}")
        await asyncio.sleep(0.01)


async def test_informer_converges_through_drops_compactions_and_gaps(tmp_path: Path) -> None:
    rng = random.Random(11)
    namespaces = ("a", "b")
    with FakeApiServer(namespaces=("default", *namespaces), bookmark_interval=0.1) as api:
        for i in range(5):
            api.put(configmap("a", f"seed{i}", "0"))
        kube = KubeClient.from_config(str(api.write_kubeconfig(tmp_path / "kubeconfig")))
        coalescer = Coalescer(quiet=0.01, max_delay=0.1)
        informer = Informer(
            kube,
            CONFIGMAP,
            on_change=coalescer,
            inactivity=2.0,
            backoff_base=0.01,
            backoff_max=0.05,
            rng=random.Random(3),
        )
        task = aio.spawn(informer.run(), name="informer under test")
        try:
            async with asyncio.timeout(5):
                await informer.synced.wait()
            assert await coalescer.wait() >= 1
            await converged(informer, api)

            # Churn: creates, updates and deletes while watches are dropped
            # (cleanly or by a reset) and the history is compacted.
            deleted: set[tuple[str, str]] = set()
            for step in range(300):
                ns, name = rng.choice(namespaces), f"cm{rng.randrange(25)}"
                if rng.random() < 0.3:
                    if api.delete("ConfigMap", ns, name) is not None:
                        deleted.add((ns, name))
                else:
                    api.put(configmap(ns, name, str(step)))
                    deleted.discard((ns, name))
                if step % 25 == 0:
                    api.drop_watches(abort=step % 50 == 0)
                if step % 40 == 0:
                    api.compact()
                await asyncio.sleep(0.001)
            await converged(informer, api)
            assert not deleted & set(versions(informer.store.items()))

            # A gap: the re-watch is refused (429, Retry-After: 1 s), and in
            # that second objects are deleted and the history compacted, so
            # the next WATCH gets 410 and the deletes come from the relist.
            relists, errors = informer.relists, informer.errors
            api.fail_next(429, retry_after=1, method="GET", path="configmaps")
            api.drop_watches()
            await eventually(lambda: informer.errors > errors)
            gone = list(versions(api.objects("ConfigMap")))[:3]
            for ns, name in gone:
                api.delete("ConfigMap", ns, name)
            api.put(configmap("b", "late", "x"))
            api.compact()
            await converged(informer, api)
            assert informer.relists > relists
            assert not set(gone) & set(versions(informer.store.items()))
            assert informer.store.get("b", "late") is not None
            assert informer.watch_restarts > 0
        finally:
            await aio.cancel_and_wait([task])
            await kube.close()

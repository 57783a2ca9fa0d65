"""A project-owned informer: a local store kept equal to the server's objects.

`Informer.run` keeps `Informer.store` (the latest object of each (namespace,
name)) in step with one kind, by this algorithm:

1. LIST. The store is replaced with the listed items; objects the store had
   that the LIST no longer has were deleted while nobody watched, so they are
   removed (the deletes are synthesized from the diff). `on_change` is called
   if anything changed (and after the first LIST, which also sets `synced`).
   The LIST's resourceVersion is remembered.
2. WATCH from the LIST's resourceVersion, never from the last listed item's
   (items come in key order, not resourceVersion order), with bookmarks.
   ADDED and MODIFIED store the object, DELETED removes it, BOOKMARK only
   moves the resourceVersion on. Every event's resourceVersion is the one the
   next WATCH starts from.
3. When the server ends the stream, or nothing (not even a bookmark) arrives
   for `inactivity` seconds, WATCH again from the last resourceVersion seen.
   A stream the server ends at once without any event is a failed start (a
   short back-off), so a server that keeps doing that is not hammered.
4. `Gone` (410: that resourceVersion is no longer in the server's history):
   back to 1, relist and diff.
5. `Retryable` (429, 5xx, connection failures) and other API errors (401/403
   while RBAC is being fixed, say): jittered exponential back-off, full jitter
   (a uniform draw in 0..min(backoff_max, backoff_base * 2**n)), at least the
   server's `Retry-After` when it gave one. A successful LIST, and a WATCH that
   delivered an event or ran its course, reset it. A `Gone` from the LIST
   itself (an expired `continue`) backs off too. The loop then resumes where
   it was: a LIST if the last one failed, else a WATCH from the last
   resourceVersion.
6. `on_change` runs after every store change. Consumers rebuild from the
   stores (level-triggered) and coalesce bursts with `Coalescer`.

Counters for the operator's metrics are plain ints on the informer:
`lists` (every LIST that filled the store), `relists` (those after the first),
`watch_restarts` (re-WATCHes: stream ended, inactive, or failed but not 410),
`errors` (failed LIST or WATCH requests), `events` (watch events applied).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, Protocol

from meshgate.kube.client import Gone, Kind, KubeError, Retryable, WatchEvent

__all__ = ["Coalescer", "Informer", "ListWatch", "Store"]

log = logging.getLogger("meshgate.kube")

# A stream the server ends sooner than this without one event was no real start.
SHORT_WATCH = 1.0

Key = tuple[str, str]


class ListWatch(Protocol):
    """What the informer needs of the client layer (`KubeClient` is one)."""

    async def list(
        self,
        kind: Kind,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> tuple[list[dict[str, Any]], str]: ...

    def watch(
        self,
        kind: Kind,
        namespace: str | None = None,
        *,
        resource_version: str,
        timeout_seconds: int = 300,
        label_selector: str | None = None,
        bookmarks: bool = True,
    ) -> AsyncGenerator[WatchEvent, None]: ...


def object_key(obj: dict[str, Any]) -> Key:
    """(namespace, name); the namespace of a cluster-scoped object is ""."""
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return ("", "")
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))


class Store:
    """The latest object of each (namespace, name). Read-only for consumers."""

    def __init__(self) -> None:
        self._objects: dict[Key, dict[str, Any]] = {}

    def items(self) -> list[dict[str, Any]]:
        return list(self._objects.values())

    def keys(self) -> list[Key]:
        return list(self._objects)

    def get(self, namespace: str | None, name: str) -> dict[str, Any] | None:
        return self._objects.get((namespace or "", name))

    def __len__(self) -> int:
        return len(self._objects)

    def put(self, obj: dict[str, Any]) -> bool:
        """Store `obj`; False when the very same object was there already."""
        key = object_key(obj)
        if self._objects.get(key) == obj:
            return False
        self._objects[key] = obj
        return True

    def remove(self, obj: dict[str, Any]) -> bool:
        return self._objects.pop(object_key(obj), None) is not None

    def replace(self, objects: list[dict[str, Any]]) -> tuple[int, int, int]:
        """Hold exactly `objects`; (added, updated, deleted) counts."""
        new = {object_key(obj): obj for obj in objects}
        added = sum(1 for key in new if key not in self._objects)
        updated = sum(1 for key, obj in new.items() if self._objects.get(key, obj) != obj)
        deleted = sum(1 for key in self._objects if key not in new)
        self._objects = new
        return added, updated, deleted


class Informer:
    """LIST then WATCH one kind into `store`, forever (see the module docstring)."""

    def __init__(
        self,
        client: ListWatch,
        kind: Kind,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        on_change: Callable[[], None] | None = None,
        watch_timeout: int = 300,
        inactivity: float = 600.0,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        self.client = client
        self.kind = kind
        self.namespace = namespace if kind.namespaced else None
        self.label_selector = label_selector
        self.on_change = on_change
        self.watch_timeout = watch_timeout
        self.inactivity = inactivity
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self._rng = rng if rng is not None else random.Random()
        self._sleep = sleep if sleep is not None else asyncio.sleep
        self.store = Store()
        self.synced = asyncio.Event()
        self.resource_version: str | None = None  # where the next WATCH starts
        self.lists = 0
        self.relists = 0
        self.watch_restarts = 0
        self.errors = 0
        self.events = 0
        self._attempt = 0  # failures in a row, for the back-off

    def _fields(self, **more: Any) -> dict[str, Any]:
        fields: dict[str, Any] = {"kind": str(self.kind)}
        if self.namespace:
            fields["namespace"] = self.namespace
        if self.label_selector:
            fields["selector"] = self.label_selector
        fields.update(more)
        return fields

    async def run(self) -> None:
        """LIST and WATCH until cancelled."""
        listed = False
        while True:
            try:
                if not listed:
                    await self._list()
                    listed = True
                started = await self._watch()
            except Gone as exc:
                if listed:
                    log.info("kube watch expired", extra={"fields": self._fields(error=str(exc))})
                    listed = False
                    continue
                await self._failed("list", exc)
            except KubeError as exc:
                if listed:
                    self.watch_restarts += 1
                await self._failed("watch" if listed else "list", exc)
            else:
                self.watch_restarts += 1
                if started:
                    self._attempt = 0
                else:
                    await self._sleep(self._backoff(None))

    async def _failed(self, request: str, exc: KubeError) -> None:
        self.errors += 1
        retry_after = exc.retry_after if isinstance(exc, Retryable) else None
        delay = self._backoff(retry_after)
        fields = self._fields(
            request=request, status=exc.status, error=str(exc), retry_in=round(delay, 3)
        )
        log.warning("kube request failed", extra={"fields": fields})
        await self._sleep(delay)

    def _backoff(self, retry_after: float | None) -> float:
        """The next delay: full jitter under a doubling cap, at least `retry_after`."""
        cap = min(self.backoff_max, self.backoff_base * 2 ** min(self._attempt, 32))
        self._attempt += 1
        delay = self._rng.uniform(0.0, cap)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return delay

    async def _list(self) -> None:
        items, rv = await self.client.list(
            self.kind, self.namespace, label_selector=self.label_selector
        )
        added, updated, deleted = self.store.replace(items)
        self.resource_version = rv
        self.lists += 1
        first = not self.synced.is_set()
        if not first:
            self.relists += 1
        self._attempt = 0
        self.synced.set()
        fields = self._fields(
            resource_version=rv,
            objects=len(items),
            added=added,
            updated=updated,
            deleted=deleted,
        )
        log.info("kube listed" if first else "kube relisted", extra={"fields": fields})
        if first or added or updated or deleted:
            self._notify()

    async def _watch(self) -> bool:
        """One WATCH; True when it really started (see SHORT_WATCH)."""
        assert self.resource_version is not None
        began = time.monotonic()
        events = 0
        stream = self.client.watch(
            self.kind,
            self.namespace,
            resource_version=self.resource_version,
            timeout_seconds=self.watch_timeout,
            label_selector=self.label_selector,
            bookmarks=True,
        )
        try:
            while True:
                timeout = asyncio.timeout(self.inactivity)
                try:
                    async with timeout:
                        event = await anext(stream)
                except StopAsyncIteration:
                    fields = self._fields(resource_version=self.resource_version, events=events)
                    log.info("kube watch ended", extra={"fields": fields})
                    return events > 0 or time.monotonic() - began >= SHORT_WATCH
                except TimeoutError:
                    if not timeout.expired():
                        raise
                    fields = self._fields(
                        resource_version=self.resource_version, idle=self.inactivity
                    )
                    log.info("kube watch inactive", extra={"fields": fields})
                    return True
                if events == 0:
                    self._attempt = 0
                events += 1
                self._apply(event)
        finally:
            await stream.aclose()

    def _apply(self, event: WatchEvent) -> None:
        self.events += 1
        rv = event.resource_version
        if rv:
            self.resource_version = rv
        if event.type in ("ADDED", "MODIFIED"):
            changed = self.store.put(event.object)
        elif event.type == "DELETED":
            changed = self.store.remove(event.object)
        elif event.type == "BOOKMARK":
            changed = False
        else:
            log.warning("kube unknown event", extra={"fields": self._fields(type=event.type)})
            changed = False
        if changed:
            self._notify()

    def _notify(self) -> None:
        if self.on_change is None:
            return
        try:
            self.on_change()
        except Exception:
            log.exception("kube on_change failed", extra={"fields": self._fields()})


class Coalescer:
    """Many `notify()` calls, one wake-up: after `quiet` seconds without one,
    but never later than `max_delay` after the first.

    Pass the coalescer (or its `notify`) as `on_change`; the consumer loops
    `await coalescer.wait(); rebuild()`. Notifications during the rebuild are
    kept for the next `wait`.
    """

    def __init__(self, quiet: float = 0.2, max_delay: float = 2.0) -> None:
        self.quiet = quiet
        self.max_delay = max_delay
        self._pending = asyncio.Event()
        self._first = 0.0
        self._last = 0.0
        self._count = 0

    def __call__(self) -> None:
        self.notify()

    @property
    def pending(self) -> bool:
        return self._pending.is_set()

    def notify(self) -> None:
        now = time.monotonic()
        if not self._pending.is_set():
            self._first = now
            self._pending.set()
        self._last = now
        self._count += 1

    async def wait(self) -> int:
        """Wait for a settled burst; the number of notifications it held."""
        await self._pending.wait()
        while True:
            # Each notify moves `_last`, so the deadline is computed afresh.
            left = min(self._last + self.quiet, self._first + self.max_delay) - time.monotonic()
            if left <= 0:
                break
            await asyncio.sleep(left)
        count, self._count = self._count, 0
        self._pending.clear()
        return count

"""The one layer every Kubernetes API call goes through.

Objects are plain `dict[str, Any]`, as the manifests translation takes them
and as the operator builds them. Configuration, authentication and TLS come
from lightkube (`KubeConfig` and the httpx client its `AsyncClient` builds), so
a real cluster (kubeconfig, in-cluster service account, exec plugins, client
certificates) and the test API server need the same code.

Which lightkube path each call takes, and why:

- `get`, `create`, `replace`, `patch`, `delete`: `lightkube.AsyncClient`'s own
  methods with a generic resource class per `Kind` (a `dict` subclass, so the
  answer is the server's JSON as dicts, with unknown fields kept). The classes
  are made here and deliberately not registered in lightkube's global
  `resource_registry`: a typed model loaded elsewhere (codecs) can then never
  change what these calls send or return, and ours never changes theirs.
- `list`: the same request lightkube's `AsyncClient.list` sends
  (`GenericAsyncClient.prepare_request` + `.list`, which pages with `limit` and
  `continue` and keeps the LIST's `metadata.resourceVersion`), called one
  level lower only so selectors pass through as Kubernetes strings
  (`AsyncClient.list` builds them from dicts).
- `watch`: lightkube's request building (`prepare_request(watch=True)`,
  `build_adapter_request`) and its httpx client, but our own stream reading.
  `AsyncClient.watch` cannot be used: it reconnects by itself when the server
  ends the stream (the informer must see that, to re-watch from the last
  resourceVersion it saw), takes the resourceVersion from every object it
  decodes, has no way to ask for bookmarks (`allowWatchBookmarks`), and turns
  an ERROR event into an `ApiError` inside its own retry loop.

Errors become the `KubeError` classes below, from the `Status` body when the
server sent one (lightkube's `ApiError`, or a raw httpx error when the answer
was not `application/json`, as from a proxy in front of the API server);
connection failures are `Retryable` with status 0.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator, Awaitable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Literal, NoReturn, TypeVar

import httpx2 as httpx
import lightkube
from lightkube.core import resource as lk_resource
from lightkube.core.generic_client import ALL_NS, GenericAsyncClient
from lightkube.generic_resource import (
    GenericGlobalResource,
    GenericGlobalStatus,
    GenericNamespacedResource,
    GenericNamespacedStatus,
    create_api_info,
)
from lightkube.types import PatchType

__all__ = [
    "CONFIGMAP",
    "DEPLOYMENT",
    "ENDPOINTSLICE",
    "EVENT",
    "INGRESS",
    "INGRESSCLASS",
    "LEASE",
    "NAMESPACE",
    "POD",
    "SECRET",
    "SERVICE",
    "Conflict",
    "Forbidden",
    "Gone",
    "Kind",
    "KubeClient",
    "KubeConfigError",
    "KubeError",
    "NotFound",
    "Retryable",
    "WatchEvent",
    "error_for",
]

# Requests other than watches: connect, read, write and pool timeouts.
REQUEST_TIMEOUT = 10.0
# LIST pages: bounded responses, one consistent snapshot through `continue`.
LIST_CHUNK = 500
# A watch's read timeout beyond the server's own `timeoutSeconds`: a guard
# against a server that forgets to end the stream (the informer also has one).
WATCH_READ_GRACE = 30.0


class KubeError(Exception):
    """An API call failed; `status` is the HTTP code (0: no answer)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}" if message else f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.message = message


class NotFound(KubeError):
    """404: no such object (or no such kind on this server)."""


class Conflict(KubeError):
    """409: AlreadyExists on create, Conflict on a stale resourceVersion."""


class Gone(KubeError):
    """410 Expired: the resourceVersion is too old; LIST again."""


class Forbidden(KubeError):
    """401 or 403: the credentials or their RBAC do not allow it."""


class Retryable(KubeError):
    """429, 5xx or no answer at all (status 0): try again after `retry_after`."""

    def __init__(
        self, status: int, reason: str, message: str, retry_after: float | None = None
    ) -> None:
        super().__init__(status, reason, message)
        self.retry_after = retry_after


class KubeConfigError(KubeError):
    """No usable kubeconfig or in-cluster configuration (status 0)."""


def error_for(
    status: int, reason: str, message: str, retry_after: float | None = None
) -> KubeError:
    """The `KubeError` subclass for an HTTP status (or a watch ERROR's `code`)."""
    if status in (401, 403):
        return Forbidden(status, reason, message)
    if status == 404:
        return NotFound(status, reason, message)
    if status == 409:
        return Conflict(status, reason, message)
    if status == 410:
        return Gone(status, reason, message)
    if status in {0, 429} or status >= 500:
        return Retryable(status, reason, message, retry_after)
    return KubeError(status, reason, message)


@dataclass(frozen=True, slots=True)
class Kind:
    """One Kubernetes resource type, enough to build its URLs."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def __str__(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural


SERVICE = Kind("", "v1", "services", "Service", namespaced=True)
ENDPOINTSLICE = Kind("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", namespaced=True)
INGRESS = Kind("networking.k8s.io", "v1", "ingresses", "Ingress", namespaced=True)
INGRESSCLASS = Kind("networking.k8s.io", "v1", "ingressclasses", "IngressClass", namespaced=False)
SECRET = Kind("", "v1", "secrets", "Secret", namespaced=True)
CONFIGMAP = Kind("", "v1", "configmaps", "ConfigMap", namespaced=True)
DEPLOYMENT = Kind("apps", "v1", "deployments", "Deployment", namespaced=True)
POD = Kind("", "v1", "pods", "Pod", namespaced=True)
# core/v1 Events: what `kubectl describe` shows, with the simplest required fields.
EVENT = Kind("", "v1", "events", "Event", namespaced=True)
LEASE = Kind("coordination.k8s.io", "v1", "leases", "Lease", namespaced=True)
NAMESPACE = Kind("", "v1", "namespaces", "Namespace", namespaced=False)


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One watch event: ADDED, MODIFIED, DELETED or BOOKMARK, and its object."""

    type: str
    object: dict[str, Any]

    @property
    def resource_version(self) -> str | None:
        rv = self.object.get("metadata", {}).get("resourceVersion")
        return str(rv) if rv else None


@dataclass(frozen=True, slots=True)
class _Classes:
    main: type[Any]
    status: type[Any]


_classes: dict[Kind, _Classes] = {}


def _resource_classes(kind: Kind) -> _Classes:
    """lightkube generic resource classes for `kind`, made once, never registered."""
    found = _classes.get(kind)
    if found is not None:
        return found
    info = create_api_info(kind.group, kind.version, kind.kind, kind.plural)
    status_info = lk_resource.ApiInfo(
        resource=info.resource,
        parent=info.resource,
        plural=kind.plural,
        verbs=["get", "patch", "put"],
        action="status",
    )
    main_base: type[Any] = GenericNamespacedResource if kind.namespaced else GenericGlobalResource
    status_base: type[Any] = GenericNamespacedStatus if kind.namespaced else GenericGlobalStatus
    made = _Classes(
        main=type(kind.kind, (main_base,), {"_api_info": info}),
        status=type(f"{kind.kind}Status", (status_base,), {"_api_info": status_info}),
    )
    _classes[kind] = made
    return made


def _retry_after(headers: Mapping[str, str], details: Mapping[str, Any]) -> float | None:
    """Seconds to wait: the Retry-After header (seconds or an HTTP date), else
    the Status's `details.retryAfterSeconds`."""
    header = headers.get("Retry-After", "").strip()
    if header:
        try:
            return max(0.0, float(header))
        except ValueError:
            pass
        try:
            when = parsedate_to_datetime(header).timestamp()
        except (TypeError, ValueError, IndexError):
            pass
        else:
            return max(0.0, when - time.time())
    seconds = details.get("retryAfterSeconds")
    if isinstance(seconds, int | float) and not isinstance(seconds, bool):
        return max(0.0, float(seconds))
    return None


def _status_body(content: bytes) -> dict[str, Any]:
    try:
        body = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        return {}
    return body if isinstance(body, dict) and body.get("kind") == "Status" else {}


def _error_from_response(response: httpx.Response) -> KubeError:
    """Map an error answer (its body already read) to a `KubeError`."""
    body = _status_body(response.content)
    details = body.get("details")
    code = response.status_code
    reason = str(body.get("reason") or response.reason_phrase or "")
    message = str(body.get("message") or response.text[:200].strip())
    return error_for(code, reason, message, _retry_after(response.headers, details or {}))


def _error_from_status(status: dict[str, Any]) -> KubeError:
    """Map a watch ERROR event's Status object to a `KubeError`."""
    code = status.get("code")
    details = status.get("details")
    return error_for(
        code if isinstance(code, int) else 500,
        str(status.get("reason") or "Error"),
        str(status.get("message") or ""),
        _retry_after({}, details if isinstance(details, dict) else {}),
    )


def _raise_mapped(exc: BaseException) -> NoReturn:
    """Re-raise a lightkube or httpx failure as a `KubeError`."""
    if isinstance(exc, httpx.HTTPStatusError):
        # lightkube's ApiError is one; others are answers that were not JSON.
        raise _error_from_response(exc.response) from exc
    if isinstance(exc, KeyError) and isinstance(exc.__context__, httpx.HTTPStatusError):
        # lightkube reads `headers["Content-Type"]` of an error answer, which
        # fails with KeyError when the answer has none (a bare 502 from a proxy).
        raise _error_from_response(exc.__context__.response) from exc.__context__
    if isinstance(exc, httpx.TransportError):
        raise Retryable(0, type(exc).__name__, str(exc) or repr(exc)) from exc
    if isinstance(exc, httpx.HTTPError):
        raise KubeError(0, type(exc).__name__, str(exc)) from exc
    if isinstance(exc, lightkube.ConfigError):
        raise KubeConfigError(0, "ConfigError", str(exc)) from exc
    raise exc


def _plain(obj: Any) -> dict[str, Any]:
    """A generic resource (a dict subclass) as a plain dict."""
    return dict(obj)


class KubeClient:
    """Async Kubernetes API client over lightkube; objects are plain dicts.

    `namespace=None` means: for `list` and `watch` of a namespaced kind, every
    namespace; for the other calls, the object's `metadata.namespace` (create,
    replace) or the configuration's default namespace.
    """

    def __init__(self, config: lightkube.KubeConfig, *, field_manager: str = "meshgate") -> None:
        try:
            self._lk = lightkube.AsyncClient(
                config, timeout=httpx.Timeout(REQUEST_TIMEOUT), field_manager=field_manager
            )
        except (lightkube.ConfigError, OSError, ValueError, KeyError) as exc:
            # No current context, an unreadable CA or client certificate...
            raise KubeConfigError(0, "ConfigError", str(exc) or repr(exc)) from exc
        # The GenericAsyncClient under lightkube's AsyncClient: its request
        # building and its httpx client (auth, TLS) serve `list` and `watch`.
        self._generic: GenericAsyncClient = self._lk._client

    @classmethod
    def from_config(cls, kubeconfig: str | None = None) -> KubeClient:
        """A client for `kubeconfig` (a file); without one, the in-cluster
        service account, else `$KUBECONFIG`, else `~/.kube/config`."""
        try:
            if kubeconfig is not None:
                config = lightkube.KubeConfig.from_file(kubeconfig)
            else:
                config = lightkube.KubeConfig.from_env()
        except (lightkube.ConfigError, OSError, ValueError, KeyError) as exc:
            raise KubeConfigError(0, "ConfigError", str(exc)) from exc
        return cls(config)

    @property
    def namespace(self) -> str:
        """The configuration's default namespace."""
        return str(self._lk.namespace)

    @property
    def server(self) -> str:
        return str(self._lk.config.cluster.server)

    def _namespace(self, kind: Kind, namespace: str | None) -> str | None:
        return namespace if kind.namespaced else None

    def _body(self, kind: Kind, obj: dict[str, Any], namespace: str | None) -> Any:
        """`obj` as the kind's generic resource, its namespace settled."""
        meta = obj.get("metadata")
        if not isinstance(meta, dict) or not meta.get("name"):
            raise ValueError(f"a {kind.kind} needs metadata.name")
        meta = dict(meta)
        if kind.namespaced and namespace is not None:
            if meta.get("namespace") not in (None, namespace):
                raise ValueError(
                    f"namespace {namespace!r} differs from metadata.namespace {meta['namespace']!r}"
                )
            meta["namespace"] = namespace
        body = {"apiVersion": kind.api_version, "kind": kind.kind, **obj, "metadata": meta}
        return _resource_classes(kind).main(body)

    async def list(
        self,
        kind: Kind,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> tuple[list[dict[str, Any]], str]:
        """Every object (all pages) and the LIST's `metadata.resourceVersion`."""
        res = _resource_classes(kind).main
        ns = (namespace or ALL_NS) if kind.namespaced else None
        try:
            br = self._generic.prepare_request(
                "list",
                res=res,
                namespace=ns,
                params={
                    "limit": LIST_CHUNK,
                    "labelSelector": label_selector,
                    "fieldSelector": field_selector,
                },
            )
            pages = self._generic.list(br)
            items = [_plain(obj) async for obj in pages]
            rv = pages.resourceVersion
            for item in items:
                # LIST items carry no kind; give them the watch objects' shape.
                item.setdefault("apiVersion", kind.api_version)
                item.setdefault("kind", kind.kind)
        except lightkube.NotReadyError as exc:
            raise KubeError(200, "NoResourceVersion", "the LIST had no resourceVersion") from exc
        except Exception as exc:
            _raise_mapped(exc)
        return items, rv

    async def watch(
        self,
        kind: Kind,
        namespace: str | None = None,
        *,
        resource_version: str,
        timeout_seconds: int = 300,
        label_selector: str | None = None,
        bookmarks: bool = True,
    ) -> AsyncGenerator[WatchEvent, None]:
        """One watch request: its events, until the server ends the stream.

        Raises `Gone` for a 410 answer or ERROR event, `Retryable` for 429/5xx
        (with Retry-After) and connection failures. Close it (`aclose`) when
        abandoning it early, so the connection is released at once.
        """
        res = _resource_classes(kind).main
        ns = (namespace or ALL_NS) if kind.namespaced else None
        try:
            br = self._generic.prepare_request(
                "list",
                res=res,
                namespace=ns,
                watch=True,
                params={
                    "resourceVersion": resource_version,
                    "timeoutSeconds": timeout_seconds,
                    "allowWatchBookmarks": "true" if bookmarks else None,
                    "labelSelector": label_selector,
                },
            )
            br.timeout = httpx.Timeout(
                REQUEST_TIMEOUT, read=float(timeout_seconds) + WATCH_READ_GRACE
            )
            request = self._generic.build_adapter_request(br)
            response = await self._generic._client.send(request, stream=True)
        except Exception as exc:
            _raise_mapped(exc)
        try:
            if response.status_code >= 400:
                await response.aread()
                raise _error_from_response(response)
            async for line in response.aiter_lines():
                if line.strip():
                    yield _decode_event(line)
        except KubeError:
            raise
        except Exception as exc:
            _raise_mapped(exc)
        finally:
            await response.aclose()

    async def get(self, kind: Kind, name: str, namespace: str | None = None) -> dict[str, Any]:
        res = _resource_classes(kind).main
        if kind.namespaced:
            return _plain(await _mapped(self._lk.get(res, name, namespace=namespace)))
        return _plain(await _mapped(self._lk.get(res, name)))

    async def create(
        self, kind: Kind, obj: dict[str, Any], namespace: str | None = None
    ) -> dict[str, Any]:
        """POST `obj`; `Conflict` when it exists already."""
        return _plain(await _mapped(self._lk.create(self._body(kind, obj, namespace))))

    async def replace(
        self, kind: Kind, obj: dict[str, Any], namespace: str | None = None
    ) -> dict[str, Any]:
        """PUT `obj`; with `metadata.resourceVersion` set, `Conflict` if it is stale."""
        return _plain(await _mapped(self._lk.replace(self._body(kind, obj, namespace))))

    async def patch(
        self,
        kind: Kind,
        name: str,
        patch: dict[str, Any],
        namespace: str | None = None,
        *,
        patch_type: Literal["merge", "apply"] = "merge",
        subresource: Literal["status"] | None = None,
        field_manager: str = "meshgate",
        force: bool = False,
    ) -> dict[str, Any]:
        """A JSON merge patch, or a server-side apply (`force` takes over fields)."""
        classes = _resource_classes(kind)
        res = classes.status if subresource == "status" else classes.main
        if patch_type == "apply":
            body = {"apiVersion": kind.api_version, "kind": kind.kind, **patch}
            body.setdefault("metadata", {}).setdefault("name", name)
            kind_of_patch = PatchType.APPLY
        else:
            body = patch
            kind_of_patch = PatchType.MERGE
        done = self._lk.patch(
            res,
            name,
            body,
            namespace=self._namespace(kind, namespace),
            patch_type=kind_of_patch,
            field_manager=field_manager,
            force=force,
        )
        return _plain(await _mapped(done))

    async def delete(self, kind: Kind, name: str, namespace: str | None = None) -> None:
        """DELETE; `NotFound` if it is absent."""
        res = _resource_classes(kind).main
        if kind.namespaced:
            await _mapped(self._lk.delete(res, name, namespace=namespace))
        else:
            await _mapped(self._lk.delete(res, name))

    async def close(self) -> None:
        await self._lk.close()

    async def __aenter__(self) -> KubeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


T = TypeVar("T")


async def _mapped(call: Awaitable[T]) -> T:
    """Await a lightkube call, its errors mapped to this module's classes."""
    try:
        return await call
    except Exception as exc:
        _raise_mapped(exc)


def _decode_event(line: str) -> WatchEvent:
    """One line of a watch stream; raises the mapped error of an ERROR event."""
    try:
        raw = json.loads(line)
    except ValueError as exc:
        raise KubeError(200, "BadWatchEvent", f"not JSON: {line[:200]!r}") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("object"), dict):
        raise KubeError(200, "BadWatchEvent", f"not an event: {line[:200]!r}")
    kind = str(raw.get("type", ""))
    obj: dict[str, Any] = raw["object"]
    if kind == "ERROR":
        raise _error_from_status(obj)
    return WatchEvent(kind, obj)

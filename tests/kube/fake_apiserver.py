"""An in-memory Kubernetes API server that speaks the real REST protocol.

No Kubernetes API server can run where meshgate's tests run, so the
controller tests talk to this one. It implements the calls meshgate makes,
with the semantics a real client relies on, so that lightkube, kubectl or
plain HTTP cannot tell the difference for those calls:

- one global, monotonically increasing ``resourceVersion`` (a decimal string);
- LIST with label and field selectors, ``limit``/``continue``, items sorted by
  namespace/name and, as for every built-in type, without ``kind``/``apiVersion``
  on the items;
- WATCH as a stream of one JSON event per line, replay from a
  ``resourceVersion`` out of a bounded history, ``410 Expired`` as an ``ERROR``
  event inside a 200 stream, BOOKMARK events, ``timeoutSeconds`` and a
  server-wide maximum watch duration; a label-selector watch turns an object
  that stops matching into ``DELETED`` and one that starts matching into
  ``ADDED``, as the watch cache does;
- create (``generateName``), update with optimistic concurrency, merge,
  strategic-merge, JSON and server-side-apply patches, the ``status``
  subresource, delete with finalizers, ``ownerReferences`` garbage collection,
  namespace deletion, and the real Status bodies for every error.

Query booleans (``watch``, ``allowWatchBookmarks``, ``force``...) parse as the
real server parses them (apimachinery's ``Convert_Slice_string_To_bool``), not
as Go's ``strconv.ParseBool``: ``0`` and any casing of ``false`` are false,
every other value, including ``f`` and the empty string, is true.

Simplified, compared with a real API server:

- no authentication or authorization beyond an optional bearer token, no
  admission webhooks, no protobuf or Table output, no ``managedFields``;
- a small set of built-in kinds (see ``RESOURCES``); no CRDs;
- defaulting and validation cover what clients observe most (object names,
  Service cluster IPs, ports and node ports, Deployment, Pod and Secret
  defaults), not the whole schema;
- server-side apply tracks, per field manager, the configuration it last
  applied: fields a manager stops applying are removed, and applying a value
  another apply manager set is a 409 conflict unless ``force``; lists are
  atomic, and fields written by PUT/merge patch are owned by nobody;
- strategic merge patch knows the merge keys of the kinds above (containers
  by name, service ports by port, conditions by type, finalizers as a set...),
  any other list is replaced;
- ``continue`` tokens page through the current state, not a snapshot;
- pods are deleted at once (there is no kubelet to confirm a graceful
  deletion); the garbage collector and the namespace controller run
  synchronously, right after the deletion that triggers them; foreground
  deletion behaves as background;
- a watch or list from a ``resourceVersion`` newer than the current one does
  not wait: it starts from now; ``sendInitialEvents`` (watch-list) and
  ``resourceVersionMatch`` are ignored.

Where the real registry differs by kind, the fake follows it (``ResourceType``):
``metadata.generation`` exists only for kinds whose strategy maintains it
(Deployment, Ingress, IngressClass), Leases refuse a PUT without
``resourceVersion`` (422) and, like Services, Endpoints and Events, may be
created by PUT; Services, Pods and Namespaces answer DELETE with the object,
the others with a ``Status``.

Start it with ``with FakeApiServer() as api:`` (background thread) or
``async with FakeApiServer() as api:`` (the running loop); see ``FakeApiServer``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import ipaddress
import json
import logging
import math
import random
import re
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, Self

import yaml
from aiohttp import web

__all__ = [
    "RESOURCES",
    "FakeApiServer",
    "RecordedRequest",
    "ResourceType",
    "query_bool",
]

log = logging.getLogger(__name__)

Obj = dict[str, Any]

OPTIMISTIC_LOCK_MSG = (
    "the object has been modified; please apply your changes to the latest version and try again"
)
JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


# --------------------------------------------------------------------------- kinds


@dataclass(frozen=True)
class ResourceType:
    """One REST resource, with the registry behaviour of its real strategy."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    status_subresource: bool = False
    # metadata.generation is only maintained by some strategies
    tracks_generation: bool = False
    # DELETE answers with the object (else with a Status "Success")
    returns_deleted_object: bool = False
    # PUT on a missing object creates it
    allow_create_on_update: bool = False
    # PUT without metadata.resourceVersion is allowed
    allow_unconditional_update: bool = True
    # "subdomain" (RFC 1123), "label" (RFC 1123) or "label1035"
    name_rule: str = "subdomain"
    field_labels: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """The group-qualified resource, as in error messages: ``deployments.apps``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    @property
    def verbs(self) -> list[str]:
        verbs = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
        if self.kind == "Namespace":
            verbs.remove("deletecollection")
        return verbs

    @property
    def supported_fields(self) -> tuple[str, ...]:
        base = ("metadata.name", "metadata.namespace") if self.namespaced else ("metadata.name",)
        return base + self.field_labels


_POD_FIELDS = (
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "spec.hostNetwork",
    "status.phase",
    "status.podIP",
    "status.nominatedNodeName",
)
_EVENT_FIELDS = (
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
)

RESOURCES: tuple[ResourceType, ...] = (
    ResourceType(
        "",
        "v1",
        "namespaces",
        "Namespace",
        namespaced=False,
        short_names=("ns",),
        status_subresource=True,
        returns_deleted_object=True,
        name_rule="label",
        field_labels=("status.phase",),
    ),
    ResourceType(
        "",
        "v1",
        "services",
        "Service",
        short_names=("svc",),
        categories=("all",),
        status_subresource=True,
        returns_deleted_object=True,
        allow_create_on_update=True,
        name_rule="label1035",
        field_labels=("spec.clusterIP", "spec.type"),
    ),
    ResourceType(
        "", "v1", "endpoints", "Endpoints", short_names=("ep",), allow_create_on_update=True
    ),
    ResourceType("", "v1", "secrets", "Secret", field_labels=("type",)),
    ResourceType("", "v1", "configmaps", "ConfigMap", short_names=("cm",)),
    ResourceType(
        "",
        "v1",
        "pods",
        "Pod",
        short_names=("po",),
        categories=("all",),
        status_subresource=True,
        returns_deleted_object=True,
        field_labels=_POD_FIELDS,
    ),
    ResourceType(
        "",
        "v1",
        "events",
        "Event",
        short_names=("ev",),
        allow_create_on_update=True,
        field_labels=_EVENT_FIELDS,
    ),
    ResourceType(
        "apps",
        "v1",
        "deployments",
        "Deployment",
        short_names=("deploy",),
        categories=("all",),
        status_subresource=True,
        tracks_generation=True,
    ),
    ResourceType("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice"),
    ResourceType(
        "networking.k8s.io",
        "v1",
        "ingresses",
        "Ingress",
        short_names=("ing",),
        status_subresource=True,
        tracks_generation=True,
    ),
    ResourceType(
        "networking.k8s.io",
        "v1",
        "ingressclasses",
        "IngressClass",
        namespaced=False,
        tracks_generation=True,
    ),
    ResourceType(
        "coordination.k8s.io",
        "v1",
        "leases",
        "Lease",
        allow_create_on_update=True,
        allow_unconditional_update=False,
    ),
)

_BY_PATH: dict[tuple[str, str, str], ResourceType] = {
    (r.group, r.version, r.plural): r for r in RESOURCES
}
_GROUP_VERSIONS: dict[str, list[str]] = {}
for _r in RESOURCES:
    _GROUP_VERSIONS.setdefault(_r.group, [])
    if _r.version not in _GROUP_VERSIONS[_r.group]:
        _GROUP_VERSIONS[_r.group].append(_r.version)


def resolve_kind(kind: str) -> ResourceType:
    """Find a resource by Kind, plural, ``plural.group`` or short name."""
    for r in RESOURCES:
        if kind in (r.kind, r.plural, r.qualified, r.singular) or kind in r.short_names:
            return r
    for r in RESOURCES:
        if kind.lower() in (r.kind.lower(), r.plural, r.singular):
            return r
    raise KeyError(f"unknown kind {kind!r}")


def _resolve_object(obj: Mapping[str, Any]) -> ResourceType:
    api_version = obj.get("apiVersion")
    kind = obj.get("kind")
    for r in RESOURCES:
        if r.api_version == api_version and r.kind == kind:
            return r
    raise KeyError(f"unknown apiVersion/kind {api_version!r}/{kind!r}")


# --------------------------------------------------------------------------- errors


class ApiError(Exception):
    """An error answered as a ``Status`` object, as the real server does."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        details: Obj | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details
        self.headers = dict(headers or {})

    def status(self) -> Obj:
        body: Obj = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
        }
        if self.reason:
            body["reason"] = self.reason
        if self.details is not None:
            body["details"] = self.details
        body["code"] = self.code
        return body


_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    409: "Conflict",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


def _details(rt: ResourceType, name: str) -> Obj:
    details: Obj = {"name": name}
    if rt.group:
        details["group"] = rt.group
    details["kind"] = rt.plural
    return details


def _not_found(rt: ResourceType, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{rt.qualified} "{name}" not found', _details(rt, name))


def _already_exists(rt: ResourceType, name: str) -> ApiError:
    return ApiError(
        409, "AlreadyExists", f'{rt.qualified} "{name}" already exists', _details(rt, name)
    )


def _conflict(rt: ResourceType, name: str, why: str = OPTIMISTIC_LOCK_MSG) -> ApiError:
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {rt.qualified} "{name}": {why}',
        _details(rt, name),
    )


def _bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


@dataclass(frozen=True)
class _FieldError:
    reason: str  # FieldValueInvalid, FieldValueRequired, FieldValueForbidden
    field: str
    message: str  # e.g. 'Invalid value: "x": must be ...'

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def _invalid_value(path: str, value: Any, detail: str) -> _FieldError:
    shown = json.dumps(value) if isinstance(value, str) else str(value)
    return _FieldError("FieldValueInvalid", path, f"Invalid value: {shown}: {detail}")


def _invalid(kind: str, group: str, name: str, errors: list[_FieldError]) -> ApiError:
    """422 Invalid; ``kind`` is a Kind, or a plural where the real server uses one."""
    qualified = f"{kind}.{group}" if group else kind
    summary = str(errors[0]) if len(errors) == 1 else "[" + ", ".join(map(str, errors)) + "]"
    details: Obj = {"name": name}
    if group:
        details["group"] = group
    details["kind"] = kind
    details["causes"] = [
        {"reason": e.reason, "message": e.message, "field": e.field} for e in errors
    ]
    return ApiError(422, "Invalid", f'{qualified} "{name}" is invalid: {summary}', details)


def _fault_error(status: int, retry_after: float | None) -> ApiError:
    headers: dict[str, str] = {}
    details: Obj | None = None
    if retry_after is not None:
        seconds = max(1, math.ceil(retry_after))
        headers["Retry-After"] = str(seconds)
        details = {"retryAfterSeconds": seconds}
    messages = {
        429: "Too many requests, please try again later.",
        500: "Internal error occurred: injected fault",
        503: "the server is currently unable to handle the request",
        504: "Timeout: request did not complete within the allotted timeout",
    }
    if status == 500:
        details = {**(details or {}), "causes": [{"message": "injected fault"}]}
    return ApiError(
        status,
        _REASONS.get(status, "Unknown"),
        messages.get(status, f"injected fault {status}"),
        details,
        headers,
    )


# --------------------------------------------------------------------------- helpers


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def query_bool(value: str | None) -> bool:
    """Parse a query boolean as the API server does.

    apimachinery's ``Convert_Slice_string_To_bool``: absent is false, ``0`` and
    any casing of ``false`` are false, anything else (``f``, ``no``, ``""``) is
    true. This is not ``strconv.ParseBool``: the server never rejects a value.
    """
    if value is None:
        return False
    return not (value == "0" or value.lower() == "false")


def _query_int(query: Mapping[str, str], name: str) -> int | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise _bad_request(f'strconv.ParseInt: parsing "{raw}": invalid syntax') from None


def _meta(obj: Obj) -> Obj:
    meta = obj.get("metadata")
    if meta is None:
        meta = obj["metadata"] = {}
    if not isinstance(meta, dict):
        raise _bad_request("metadata: expected an object")
    return meta


def _dumps(obj: Any, pretty: bool = False) -> bytes:
    if pretty:
        return json.dumps(obj, indent=2, ensure_ascii=False).encode() + b"\n"
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def _json_response(
    code: int, body: Any, headers: Mapping[str, str] | None = None, pretty: bool = False
) -> web.Response:
    all_headers = {"Content-Type": JSON, "Cache-Control": "no-cache, private"}
    all_headers.update(headers or {})
    return web.Response(status=code, body=_dumps(body, pretty), headers=all_headers)


_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_NAME_RULES: dict[str, tuple[re.Pattern[str], int, str]] = {
    "subdomain": (
        _SUBDOMAIN,
        253,
        "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
        "'-' or '.', and must start and end with an alphanumeric character (e.g. "
        "'example.com', regex used for validation is "
        "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
    ),
    "label": (
        _LABEL,
        63,
        "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or "
        "'-', and must start and end with an alphanumeric character (e.g. 'my-name',  or "
        "'123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')",
    ),
    "label1035": (
        _LABEL1035,
        63,
        "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start "
        "with an alphabetic character, and end with an alphanumeric character (e.g. "
        "'my-name',  or 'abc-123', regex used for validation is "
        "'[a-z]([-a-z0-9]*[a-z0-9])?')",
    ),
}
# names.SimpleNameGenerator: 5 characters without vowels nor look-alikes
_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def _name_errors(rt: ResourceType, name: str) -> list[_FieldError]:
    pattern, max_len, message = _NAME_RULES[rt.name_rule]
    errors = []
    if len(name) > max_len:
        errors.append(
            _invalid_value("metadata.name", name, f"must be no more than {max_len} characters")
        )
    if not pattern.match(name):
        errors.append(_invalid_value("metadata.name", name, message))
    return errors


# --------------------------------------------------------------------------- selectors

_LABEL_KEY_CHARS = re.compile(r"[A-Za-z0-9._/-]")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


@dataclass(frozen=True)
class _Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!", "gt", "lt"
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, Any]) -> bool:
        has = self.key in labels
        value = labels.get(self.key)
        if self.op == "exists":
            return has
        if self.op == "!":
            return not has
        if self.op in ("=", "in"):
            return has and value in self.values
        if self.op in ("!=", "notin"):
            return not has or value not in self.values
        if not has:
            return False
        try:
            number = int(str(value))
        except ValueError:
            return False
        limit = int(self.values[0])
        return number > limit if self.op == "gt" else number < limit


class LabelSelector:
    """A parsed ``labelSelector`` query (the string form of ``labels.Parse``)."""

    def __init__(self, requirements: list[_Requirement]) -> None:
        self.requirements = requirements

    def matches(self, labels: Mapping[str, Any] | None) -> bool:
        labels = labels or {}
        return all(r.matches(labels) for r in self.requirements)

    @classmethod
    def parse(cls, text: str) -> LabelSelector:
        return cls(_LabelParser(text).parse())


class _LabelParser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def error(self, detail: str) -> ApiError:
        return _bad_request(f"unable to parse requirement: {detail}")

    def skip_ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self, token: str) -> bool:
        return self.text.startswith(token, self.pos)

    def read_word(self) -> str:
        start = self.pos
        while self.pos < len(self.text) and _LABEL_KEY_CHARS.match(self.text[self.pos]):
            self.pos += 1
        return self.text[start : self.pos]

    def read_key(self) -> str:
        self.skip_ws()
        key = self.read_word()
        if not key:
            found = self.text[self.pos : self.pos + 1] or "end of input"
            raise self.error(f"found '{found}', expected: identifier")
        return key

    def read_value(self) -> str:
        self.skip_ws()
        value = self.read_word()
        if len(value) > 63 or not _LABEL_VALUE.match(value):
            raise self.error(f'invalid label value: "{value}"')
        return value

    def read_set(self) -> tuple[str, ...]:
        self.skip_ws()
        if not self.peek("("):
            raise self.error("expected: '('")
        self.pos += 1
        values: list[str] = []
        while True:
            values.append(self.read_value())
            self.skip_ws()
            if self.peek(","):
                self.pos += 1
                continue
            if self.peek(")"):
                self.pos += 1
                break
            raise self.error("expected: ',' or ')'")
        if values == [""]:
            raise self.error("for 'in', 'notin' operators, values set can't be empty")
        return tuple(values)

    def parse_one(self) -> _Requirement:
        self.skip_ws()
        if self.peek("!"):
            self.pos += 1
            return _Requirement(self.read_key(), "!")
        key = self.read_key()
        self.skip_ws()
        if self.pos >= len(self.text) or self.peek(","):
            return _Requirement(key, "exists")
        for token, op in (("==", "="), ("!=", "!="), ("=", "="), (">", "gt"), ("<", "lt")):
            if self.peek(token):
                self.pos += len(token)
                value = self.read_value()
                if op in ("gt", "lt") and not value.lstrip("-").isdigit():
                    raise self.error(
                        f"for 'Gt', 'Lt' operators, the value must be an integer: {value}"
                    )
                return _Requirement(key, op, (value,))
        word = self.read_word()
        if word in ("in", "notin"):
            return _Requirement(key, word, self.read_set())
        raise self.error(
            f"found '{word or self.text[self.pos]}', expected: in, notin, =, ==, !=, gt, lt"
        )

    def parse(self) -> list[_Requirement]:
        requirements: list[_Requirement] = []
        self.skip_ws()
        if self.pos >= len(self.text):
            return requirements
        while True:
            requirements.append(self.parse_one())
            self.skip_ws()
            if self.pos >= len(self.text):
                return requirements
            if not self.peek(","):
                raise self.error(f"found '{self.text[self.pos]}', expected: ',' or 'end of string'")
            self.pos += 1


def _split_unescaped(text: str, sep: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            current.append(text[i : i + 2])
            i += 2
            continue
        if ch == sep:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    parts.append("".join(current))
    return parts


def _unescape_field(value: str) -> str:
    return re.sub(r"\\(.)", r"\1", value)


class FieldSelector:
    """A parsed ``fieldSelector`` query: ``a=b``, ``a==b``, ``a!=b``, comma-separated."""

    def __init__(self, terms: list[tuple[str, str, str]]) -> None:
        self.terms = terms

    @classmethod
    def parse(cls, text: str, rt: ResourceType) -> FieldSelector:
        terms: list[tuple[str, str, str]] = []
        if not text.strip():
            return cls(terms)
        for part in _split_unescaped(text, ","):
            match = re.match(r"^([^=!]*)(==|!=|=)(.*)$", part)
            if match is None:
                raise _bad_request(f"invalid selector: '{text}'; can't understand '{part}'")
            name, op, value = match.group(1).strip(), match.group(2), match.group(3)
            if name not in rt.supported_fields:
                raise _bad_request(f"field label not supported: {name}")
            terms.append((name, "!=" if op == "!=" else "=", _unescape_field(value)))
        return cls(terms)

    def matches(self, obj: Obj) -> bool:
        for name, op, value in self.terms:
            actual = _field_value(obj, name)
            if (actual == value) != (op == "="):
                return False
        return True


def _field_value(obj: Obj, name: str) -> str:
    path = "source.component" if name == "source" else name
    current: Any = obj
    for part in path.split("."):
        current = current.get(part) if isinstance(current, dict) else None
    if current is None:
        return ""
    if isinstance(current, bool):
        return "true" if current else "false"
    return str(current)


# --------------------------------------------------------------------------- patches


class _PatchError(Exception):
    pass


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch; ``target`` is modified (pass a copy)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = target if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


_DELETE = object()


def _smp_list_key(path: tuple[str, ...]) -> str | None:
    """The strategic-merge-patch merge key of the list at ``path``; "" for a set."""
    if path == ("metadata", "finalizers"):
        return ""
    if path == ("metadata", "ownerReferences"):
        return "uid"
    if path == ("spec", "ports"):  # Service
        return "port"
    if path[-2:] == ("status", "conditions"):
        return "type"
    last = path[-1]
    if last in ("containers", "initContainers", "ephemeralContainers"):
        return "name"
    if path[-2:] in (("containers", "ports"), ("initContainers", "ports")):
        return "containerPort"
    keys = {
        "env": "name",
        "volumes": "name",
        "volumeMounts": "mountPath",
        "volumeDevices": "devicePath",
        "imagePullSecrets": "name",
        "hostAliases": "ip",
    }
    if last in keys and "spec" in path:
        return keys[last]
    return None


def strategic_merge_patch(target: Any, patch: Any, path: tuple[str, ...] = ()) -> Any:
    """Strategic merge patch with the merge keys of the kinds served here."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    directive = patch.get("$patch")
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if directive == "delete":
        return _DELETE
    out = target if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys") or key.startswith("$setElementOrder/"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            name = key.split("/", 1)[1]
            if isinstance(out.get(name), list) and isinstance(value, list):
                out[name] = [item for item in out[name] if item not in value]
            continue
        if value is None:
            out.pop(key, None)
        elif isinstance(value, list):
            out[key] = _smp_list(out.get(key), value, (*path, key))
        elif isinstance(value, dict):
            merged = strategic_merge_patch(out.get(key), value, (*path, key))
            if merged is _DELETE:
                out.pop(key, None)
            else:
                out[key] = merged
        else:
            out[key] = value
    retain = patch.get("$retainKeys")
    if isinstance(retain, list):
        for key in list(out):
            if key not in retain:
                del out[key]
    return out


def _is_directive(item: Any) -> bool:
    return isinstance(item, dict) and "$patch" in item


def _smp_list(current: Any, patch: list[Any], path: tuple[str, ...]) -> list[Any]:
    if any(isinstance(i, dict) and i.get("$patch") == "replace" for i in patch):
        return [copy.deepcopy(i) for i in patch if not _is_directive(i)]
    key = _smp_list_key(path)
    if key is None or not isinstance(current, list):
        return [copy.deepcopy(i) for i in patch if not (_is_directive(i) and key is not None)]
    out = list(current)
    if key == "":
        out.extend(copy.deepcopy(i) for i in patch if i not in out)
        return out
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            out.append(copy.deepcopy(item))
            continue
        index = next(
            (n for n, e in enumerate(out) if isinstance(e, dict) and e.get(key) == item[key]), None
        )
        if item.get("$patch") == "delete":
            if index is not None:
                del out[index]
            continue
        if index is None:
            out.append(strategic_merge_patch({}, item, path))
        else:
            out[index] = strategic_merge_patch(out[index], item, path)
    return out


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise _PatchError(f"invalid JSON pointer: {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _resolve_parent(doc: Any, parts: list[str]) -> tuple[Any, str]:
    current = doc
    for part in parts[:-1]:
        if isinstance(current, dict) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            raise _PatchError(f"doc is missing path: /{'/'.join(parts)}")
    return current, parts[-1]


def _pointer_get(doc: Any, path: str) -> Any:
    current = doc
    for part in _pointer(path):
        if isinstance(current, dict) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            raise _PatchError(f"doc is missing path: {path}")
    return current


def _pointer_add(doc: Any, path: str, value: Any) -> Any:
    parts = _pointer(path)
    if not parts:
        return value
    parent, last = _resolve_parent(doc, parts)
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        if last == "-":
            parent.append(value)
        elif last.isdigit() and int(last) <= len(parent):
            parent.insert(int(last), value)
        else:
            raise _PatchError(f"index out of bounds: {path}")
    else:
        raise _PatchError(f"doc is missing path: {path}")
    return doc


def _pointer_remove(doc: Any, path: str) -> Any:
    parts = _pointer(path)
    if not parts:
        raise _PatchError("cannot remove the whole document")
    parent, last = _resolve_parent(doc, parts)
    if isinstance(parent, dict) and last in parent:
        return parent.pop(last)
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent.pop(int(last))
    raise _PatchError(f"unable to remove nonexistent key: {path}")


def json_patch(doc: Any, operations: Any) -> Any:
    """RFC 6902 JSON patch; ``doc`` is modified (pass a copy)."""
    if not isinstance(operations, list):
        raise _bad_request("json patch must be a list of operations")
    for op in operations:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise _bad_request(f"invalid json patch operation: {op!r}")
        kind, path = op["op"], op["path"]
        if kind == "add":
            doc = _pointer_add(doc, path, copy.deepcopy(op.get("value")))
        elif kind == "remove":
            _pointer_remove(doc, path)
        elif kind == "replace":
            _pointer_get(doc, path)
            if _pointer(path):
                _pointer_remove(doc, path)
            doc = _pointer_add(doc, path, copy.deepcopy(op.get("value")))
        elif kind in ("move", "copy"):
            value = copy.deepcopy(_pointer_get(doc, op.get("from", "")))
            if kind == "move":
                _pointer_remove(doc, op.get("from", ""))
            doc = _pointer_add(doc, path, value)
        elif kind == "test":
            if _pointer_get(doc, path) != op.get("value"):
                raise _PatchError(f"testing value {path} failed")
        else:
            raise _bad_request(f"Unexpected kind: {kind}")
    return doc


_Applied = dict[tuple[str, ...], Any]


def _leaves(obj: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Field paths of an applied configuration: maps recurse, lists are atomic."""
    if not isinstance(obj, dict) or (not obj and prefix):
        return {prefix: obj}
    out: dict[tuple[str, ...], Any] = {}
    for key, value in obj.items():
        out.update(_leaves(value, (*prefix, key)))
    return out


_IDENTITY_PATHS = {
    ("apiVersion",),
    ("kind",),
    ("metadata", "name"),
    ("metadata", "namespace"),
    ("metadata", "resourceVersion"),
    ("metadata", "uid"),
}


def _remove_path(obj: Obj, path: tuple[str, ...]) -> None:
    current: Any = obj
    parents: list[tuple[Obj, str]] = []
    for part in path[:-1]:
        if not isinstance(current, dict) or part not in current:
            return
        parents.append((current, part))
        current = current[part]
    if isinstance(current, dict):
        current.pop(path[-1], None)
        # drop maps this removal left empty, as SSA does for fields nobody owns
        while parents and current == {}:
            parent, key = parents.pop()
            del parent[key]
            current = parent


# --------------------------------------------------------------------------- watches


@dataclass
class _Event:
    rv: int
    rt: ResourceType
    type: str  # ADDED, MODIFIED, DELETED
    obj: Obj
    prev: Obj | None


class RecordedRequest(NamedTuple):
    """One request the server received: method, path and query (first values)."""

    method: str
    path: str
    query: dict[str, str]


@dataclass(eq=False)
class _Watcher:
    rt: ResourceType
    namespace: str | None
    labels: LabelSelector
    fields: FieldSelector
    request: RecordedRequest
    queue: deque[tuple[str, Obj]] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    close_reason: str | None = None  # "drop", "abort", "shutdown"

    def selects(self, obj: Obj) -> bool:
        if self.namespace is not None and obj["metadata"].get("namespace") != self.namespace:
            return False
        return self.labels.matches(obj["metadata"].get("labels")) and self.fields.matches(obj)

    def transform(self, event: _Event) -> tuple[str, Obj] | None:
        """What this watcher sees of an event (the watch cache's rules)."""
        if event.rt is not self.rt:
            return None
        now = event.type != "DELETED" and self.selects(event.obj)
        before = event.prev is not None and self.selects(event.prev)
        if now and not before:
            return "ADDED", event.obj
        if now and before:
            return "MODIFIED", event.obj
        if before:
            gone = event.obj
            if event.type != "DELETED" and event.prev is not None:
                # stopped matching: the previous state, at the event's version
                gone = copy.deepcopy(event.prev)
                gone["metadata"]["resourceVersion"] = str(event.rv)
            return "DELETED", gone
        return None


@dataclass
class _Fault:
    status: int
    times: int
    retry_after: float | None
    method: str | None
    path: str | None

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method.upper() != method:
            return False
        return self.path is None or self.path in path


@dataclass
class _Target:
    rt: ResourceType
    namespace: str | None  # None: cluster-scoped kind, or all namespaces
    name: str | None
    subresource: str | None
    all_namespaces: bool
    watch_prefix: bool


def _order_keys(obj: Obj) -> None:
    """Serialize as the real server does: kind, apiVersion, metadata, spec..., status."""
    rest = {k: obj.pop(k) for k in list(obj) if k not in ("kind", "apiVersion", "metadata")}
    head: Obj = {k: obj.pop(k) for k in ("kind", "apiVersion", "metadata") if k in obj}
    status = rest.pop("status", None)
    obj.update(head)
    obj.update(rest)
    if status is not None:
        obj["status"] = status


def _pending_finalizers(rt: ResourceType, obj: Obj) -> bool:
    if obj["metadata"].get("finalizers"):
        return True
    return rt.kind == "Namespace" and bool((obj.get("spec") or {}).get("finalizers"))


def _default_status(rt: ResourceType, obj: Obj) -> Obj:
    if rt.kind in ("Service", "Ingress"):
        return {"loadBalancer": {}}
    if rt.kind == "Pod":
        containers = obj.get("spec", {}).get("containers") or []
        limited = any(isinstance(c, dict) and c.get("resources") for c in containers)
        return {"phase": "Pending", "qosClass": "Burstable" if limited else "BestEffort"}
    if rt.kind == "Namespace":
        return {"phase": "Active"}
    return {}


# --------------------------------------------------------------------------- server


class FakeApiServer:
    """A Kubernetes API server in memory, served over plain HTTP by aiohttp.

    Start it in a background thread with its own event loop (``with
    FakeApiServer() as api:`` or ``start()``/``stop()``), or on the running
    loop (``async with FakeApiServer() as api:``). ``url`` is its address and
    ``write_kubeconfig(path)`` writes a kubeconfig for it.

    The hooks (``put``, ``delete``, ``get_object``, ``objects``,
    ``drop_watches``, ``compact``, ``fail_next``, ``requests``...) are plain
    methods, safe to call from any thread; writes made through them behave as
    if another client had made them, and emit watch events.
    """

    def __init__(
        self,
        *,
        history_size: int = 1000,
        bookmark_interval: float = 60.0,
        max_watch_seconds: float | None = None,
        token: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        namespaces: Iterable[str] = DEFAULT_NAMESPACES,
        server_version: tuple[int, int, int] = (1, 31, 0),
    ) -> None:
        """Configure the server (it starts with ``start()`` or as a context manager).

        history_size: watch events kept for replay; a watch from an older
            resourceVersion gets 410 Expired.
        bookmark_interval: seconds between BOOKMARK events of a watch that
            allows them (the real server sends one about every minute).
        max_watch_seconds: the longest a watch may stay open (None: no limit),
            also used when a watch has no ``timeoutSeconds``.
        token: if set, requests must carry ``Authorization: Bearer <token>``.
        namespaces: namespaces that exist from the start.
        """
        self.history_size = history_size
        self.bookmark_interval = bookmark_interval
        self.max_watch_seconds = max_watch_seconds
        self.token = token
        self.host = host
        self._requested_port = port
        self._server_version = server_version

        self._lock = threading.RLock()
        self._watch_changed = threading.Condition(self._lock)
        self._objects: dict[tuple[str, str, str], Obj] = {}
        self._uids: dict[str, tuple[str, str, str]] = {}
        self._rv = 0
        self._history: deque[_Event] = deque()
        self._history_floor = 0
        self._watchers: set[_Watcher] = set()
        # server-side apply: per object (and subresource), per manager, what it applied
        self._applied: dict[tuple[str, str, str, str], dict[str, _Applied]] = {}
        self._requests: list[RecordedRequest] = []
        self._faults: list[_Fault] = []
        self._allocated_ips: set[str] = set()
        self._next_ip = int(ipaddress.IPv4Address("10.96.0.10"))
        self._next_node_port = 30000

        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None

        with self._lock:
            for name in namespaces:
                self._ensure_namespace(name)

    # ------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        """The base URL, ``http://127.0.0.1:PORT``."""
        if self._port is None:
            raise RuntimeError("the fake API server is not started")
        return f"http://{self.host}:{self._port}"

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the fake API server is not started")
        return self._port

    def start(self) -> Self:
        """Serve from a background thread that runs its own event loop."""
        if self._loop is not None:
            raise RuntimeError("already started")
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._serve())
            except BaseException as exc:  # reported to start()
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="fake-apiserver", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the fake API server did not start within 10 s")
        if failure:
            self._loop = None
            raise failure[0]
        return self

    def stop(self) -> None:
        """Close every watch, stop serving and end the background thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
        try:
            future.result(timeout=10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            self._loop = None
            self._thread = None

    async def start_async(self) -> Self:
        """Serve from the running event loop (in-process use)."""
        if self._loop is not None:
            raise RuntimeError("already started")
        self._loop = asyncio.get_running_loop()
        try:
            await self._serve()
        except BaseException:
            self._loop = None
            raise
        return self

    async def stop_async(self) -> None:
        if self._loop is None:
            return
        await self._shutdown()
        self._loop = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return await self.start_async()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop_async()

    async def _serve(self) -> None:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=2)
        await runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self._requested_port))
            sock.setblocking(False)
            site = web.SockSite(runner, sock)
            await site.start()
        except BaseException:
            sock.close()
            await runner.cleanup()
            raise
        self._port = sock.getsockname()[1]
        self._runner = runner

    async def _shutdown(self) -> None:
        with self._lock:
            watchers = list(self._watchers)
        for watcher in watchers:
            watcher.close_reason = "shutdown"
            watcher.wake.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self._port = None

    def write_kubeconfig(self, path: str | Path, *, namespace: str = "default") -> Path:
        """Write a kubeconfig whose current context points at this server."""
        path = Path(path)
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": self.token or "fake-token"}}],
            "contexts": [
                {
                    "name": "fake",
                    "context": {"cluster": "fake", "user": "fake", "namespace": namespace},
                }
            ],
            "current-context": "fake",
            "preferences": {},
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    # ------------------------------------------------------------- test hooks

    @property
    def resource_version(self) -> str:
        """The current (latest) resourceVersion."""
        with self._lock:
            return str(self._rv)

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, oldest first (a copy)."""
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    @property
    def open_watches(self) -> list[RecordedRequest]:
        """The requests of the watch streams open now."""
        with self._lock:
            return [w.request for w in self._watchers if w.close_reason is None]

    def wait_for_watches(self, count: int = 1, timeout: float = 5.0) -> None:
        """Block until at least ``count`` watches are open (not from the server's loop)."""
        deadline = time.monotonic() + timeout
        with self._watch_changed:
            while len(self.open_watches) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{len(self.open_watches)} watches open, wanted {count}")
                self._watch_changed.wait(remaining)

    async def await_watches(self, count: int = 1, *, within: float = 5.0) -> None:
        """Wait until at least ``count`` watches are open, without blocking the loop."""
        deadline = time.monotonic() + within
        while len(self.open_watches) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.open_watches)} watches open, wanted {count}")
            await asyncio.sleep(0.01)

    def put(self, given: Mapping[str, Any]) -> Obj:
        """Create or replace an object, as another client would; returns it as stored.

        ``apiVersion`` and ``kind`` say what it is; a namespaced object without
        a namespace goes to ``default``, and a missing namespace is created.
        Unlike an API write, ``status`` is kept as given (a create, then a
        status update): it is how a test plays the part of another controller.
        """
        obj: Obj = copy.deepcopy(dict(given))
        rt = _resolve_object(obj)
        meta = _meta(obj)
        name = meta.get("name")
        if not name:
            raise ValueError("put() needs metadata.name")
        namespace = (meta.get("namespace") or "default") if rt.namespaced else ""
        with self._lock:
            if rt.namespaced:
                meta["namespace"] = namespace
                self._ensure_namespace(namespace)
            else:
                meta.pop("namespace", None)
            old = self._objects.get((rt.qualified, namespace, name))
            meta.pop("resourceVersion", None)
            if old is None:
                return copy.deepcopy(self._create_object(rt, obj, keep_status=True))
            meta["resourceVersion"] = old["metadata"]["resourceVersion"]
            status = obj.get("status")
            new = self._updated_object(rt, old, obj, None)
            if status is not None:
                new["status"] = status
            return copy.deepcopy(self._commit_update(rt, old, new))

    def delete(self, kind: str, namespace: str | None, name: str) -> Obj | None:
        """Delete an object as a client would (finalizers are honoured).

        Returns its last state (with ``deletionTimestamp`` if finalizers keep
        it), or None if there is no such object.
        """
        rt = resolve_kind(kind)
        with self._lock:
            key = (rt.qualified, (namespace or "") if rt.namespaced else "", name)
            old = self._objects.get(key)
            if old is None:
                return None
            return copy.deepcopy(self._delete_object(rt, old, "Background"))

    def get_object(self, kind: str, namespace: str | None, name: str) -> Obj | None:
        """The stored object (a copy), or None. ``kind``: Kind, plural or short name."""
        rt = resolve_kind(kind)
        key = (rt.qualified, (namespace or "") if rt.namespaced else "", name)
        with self._lock:
            obj = self._objects.get(key)
            return copy.deepcopy(obj) if obj is not None else None

    def objects(self, kind: str, namespace: str | None = None) -> list[Obj]:
        """Every stored object of a kind (copies), sorted by namespace and name."""
        rt = resolve_kind(kind)
        with self._lock:
            return [
                copy.deepcopy(obj)
                for (qualified, ns, _), obj in sorted(self._objects.items())
                if qualified == rt.qualified and (namespace is None or ns == namespace)
            ]

    def drop_watches(self, *, abort: bool = False) -> int:
        """Close every open watch stream now; returns how many were open.

        The streams end cleanly (as when the server drops a watch), or with
        ``abort=True`` their connections are reset.
        """
        with self._lock:
            watchers = [w for w in self._watchers if w.close_reason is None]
            for watcher in watchers:
                watcher.close_reason = "abort" if abort else "drop"
                self._wake(watcher)
            return len(watchers)

    def compact(self, keep: int = 0) -> None:
        """Forget the watch history but its last ``keep`` events.

        A watch from a resourceVersion older than what is kept gets a 410.
        """
        with self._lock:
            while len(self._history) > keep:
                self._history_floor = self._history.popleft().rv
            if not self._history:
                self._history_floor = self._rv

    def fail_next(
        self,
        status: int = 500,
        times: int = 1,
        retry_after: float | None = None,
        *,
        method: str | None = None,
        path: str | None = None,
    ) -> None:
        """Answer the next ``times`` requests with ``status`` and a Status body.

        ``retry_after`` adds a ``Retry-After`` header (429, 503); ``method``
        and ``path`` (a substring of the request path) restrict which requests
        fail.
        """
        with self._lock:
            self._faults.append(_Fault(status, times, retry_after, method, path))

    # ------------------------------------------------------------- storage

    def _key(self, rt: ResourceType, obj: Obj) -> tuple[str, str, str]:
        meta = obj["metadata"]
        return (rt.qualified, meta.get("namespace", "") if rt.namespaced else "", meta["name"])

    def _wake(self, watcher: _Watcher) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(watcher.wake.set)

    def _emit(self, rt: ResourceType, kind: str, obj: Obj, prev: Obj | None) -> None:
        event = _Event(self._rv, rt, kind, obj, prev)
        self._history.append(event)
        while len(self._history) > self.history_size:
            self._history_floor = self._history.popleft().rv
        for watcher in self._watchers:
            if watcher.close_reason is not None:
                continue
            seen = watcher.transform(event)
            if seen is not None:
                watcher.queue.append(seen)
                self._wake(watcher)

    def _ensure_namespace(self, name: str) -> None:
        rt = _BY_PATH[("", "v1", "namespaces")]
        if (rt.qualified, "", name) not in self._objects:
            self._create_object(
                rt, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
            )

    def _create_object(
        self, rt: ResourceType, obj: Obj, *, keep_status: bool = False, dry_run: bool = False
    ) -> Obj:
        """Fill system fields, default and store a new object (lock held)."""
        meta = obj["metadata"]
        obj["apiVersion"] = rt.api_version
        obj["kind"] = rt.kind
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        meta.pop("deletionTimestamp", None)
        meta.pop("deletionGracePeriodSeconds", None)
        if rt.tracks_generation:
            meta["generation"] = 1
        else:
            meta.pop("generation", None)
        status = obj.get("status")
        if rt.status_subresource:
            obj["status"] = _default_status(rt, obj)
        self._prepare(rt, obj, None)
        if keep_status and status is not None:
            obj["status"] = status
        _order_keys(obj)
        if dry_run:
            return obj
        self._rv += 1
        meta["resourceVersion"] = str(self._rv)
        key = self._key(rt, obj)
        self._objects[key] = obj
        self._uids[meta["uid"]] = key
        self._emit(rt, "ADDED", obj, None)
        return obj

    def _prepare(self, rt: ResourceType, obj: Obj, old: Obj | None) -> None:
        """Kind-specific defaulting and PrepareForCreate/PrepareForUpdate."""
        if rt.kind == "Service":
            self._default_service(obj, old)
        elif rt.kind == "Secret":
            string_data = obj.pop("stringData", None)
            if isinstance(string_data, dict):
                data = obj.setdefault("data", {}) or {}
                for key, value in string_data.items():
                    data[key] = base64.b64encode(str(value).encode()).decode()
                obj["data"] = data
            obj.setdefault("type", "Opaque")
        elif rt.kind == "Deployment":
            spec = obj.setdefault("spec", {})
            spec.setdefault("replicas", 1)
            spec.setdefault("revisionHistoryLimit", 10)
            spec.setdefault("progressDeadlineSeconds", 600)
            spec.setdefault(
                "strategy",
                {
                    "type": "RollingUpdate",
                    "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"},
                },
            )
        elif rt.kind == "Pod":
            spec = obj.setdefault("spec", {})
            spec.setdefault("restartPolicy", "Always")
            spec.setdefault("terminationGracePeriodSeconds", 30)
            spec.setdefault("dnsPolicy", "ClusterFirst")
            spec.setdefault("schedulerName", "default-scheduler")
            spec.setdefault("securityContext", {})
            for container in spec.get("containers") or []:
                if not isinstance(container, dict):
                    continue
                image = str(container.get("image", ""))
                tag = image.rsplit("/", 1)[-1]
                latest = ":" not in tag or tag.endswith(":latest")
                container.setdefault("imagePullPolicy", "Always" if latest else "IfNotPresent")
                container.setdefault("terminationMessagePath", "/dev/termination-log")
                container.setdefault("terminationMessagePolicy", "File")
                container.setdefault("resources", {})
        elif rt.kind == "Namespace":
            meta = obj["metadata"]
            labels = meta.get("labels") or {}
            labels["kubernetes.io/metadata.name"] = meta["name"]
            meta["labels"] = labels
            if old is None:
                obj["spec"] = {"finalizers": ["kubernetes"]}
            else:
                obj["spec"] = copy.deepcopy(old.get("spec", {}))

    def _allocate_ip(self) -> str:
        while True:
            address = str(ipaddress.IPv4Address(self._next_ip))
            self._next_ip += 1
            if address not in self._allocated_ips:
                self._allocated_ips.add(address)
                return address

    def _default_service(self, obj: Obj, old: Obj | None) -> None:
        spec = obj.get("spec")
        if not isinstance(spec, dict):
            spec = obj["spec"] = {}
        old_spec: Obj = (old or {}).get("spec") or {}
        kind = spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        ports = [p for p in spec.get("ports") or [] if isinstance(p, dict)]
        for port in ports:
            port.setdefault("protocol", "TCP")
            if "port" in port:
                port.setdefault("targetPort", port["port"])
        if kind == "ExternalName":
            return
        if not spec.get("clusterIP") and not spec.get("clusterIPs"):
            if old_spec.get("clusterIP"):
                spec["clusterIP"] = old_spec["clusterIP"]
                spec["clusterIPs"] = list(old_spec.get("clusterIPs") or [old_spec["clusterIP"]])
            else:
                spec["clusterIP"] = self._allocate_ip()
        if not spec.get("clusterIP"):
            spec["clusterIP"] = spec["clusterIPs"][0]
        if not spec.get("clusterIPs"):
            spec["clusterIPs"] = [spec["clusterIP"]]
        self._allocated_ips.update(ip for ip in spec["clusterIPs"] if ip != "None")
        spec.setdefault("ipFamilies", old_spec.get("ipFamilies") or ["IPv4"])
        spec.setdefault("ipFamilyPolicy", old_spec.get("ipFamilyPolicy") or "SingleStack")
        spec.setdefault("internalTrafficPolicy", "Cluster")
        if kind in ("NodePort", "LoadBalancer"):
            spec.setdefault("externalTrafficPolicy", "Cluster")
            old_ports = [p for p in old_spec.get("ports") or [] if isinstance(p, dict)]
            for port in ports:
                if port.get("nodePort"):
                    continue
                previous = next(
                    (
                        p.get("nodePort")
                        for p in old_ports
                        if p.get("port") == port.get("port")
                        and p.get("protocol", "TCP") == port["protocol"]
                    ),
                    None,
                )
                if previous:
                    port["nodePort"] = previous
                else:
                    port["nodePort"] = self._next_node_port
                    self._next_node_port += 1
        if kind == "LoadBalancer":
            spec.setdefault("allocateLoadBalancerNodePorts", True)

    def _updated_object(self, rt: ResourceType, old: Obj, new: Obj, subresource: str | None) -> Obj:
        """The object an update of ``old`` to ``new`` stores (BeforeUpdate); lock held.

        Checks the resourceVersion precondition; ``new`` is consumed.
        """
        name = old["metadata"]["name"]
        new_meta = _meta(new)
        new_rv = str(new_meta.get("resourceVersion") or "")
        if not new_rv:
            if not rt.allow_unconditional_update:
                raise _invalid(
                    rt.plural,
                    rt.group,
                    name,
                    [
                        _FieldError(
                            "FieldValueInvalid",
                            "metadata.resourceVersion",
                            "Invalid value: 0x0: must be specified for an update",
                        )
                    ],
                )
        elif not new_rv.isdigit():
            raise _bad_request(f'invalid resource version: "{new_rv}"')
        elif new_rv != old["metadata"]["resourceVersion"]:
            raise _conflict(rt, name)

        if subresource == "status":
            result = copy.deepcopy(old)
            if "status" in new:
                result["status"] = new["status"]
            else:
                result.pop("status", None)
            return result

        old_meta = old["metadata"]
        uid = new_meta.get("uid")
        if uid and uid != old_meta["uid"]:
            raise _invalid(
                rt.kind,
                rt.group,
                name,
                [_invalid_value("metadata.uid", uid, "field is immutable")],
            )
        new["apiVersion"] = rt.api_version
        new["kind"] = rt.kind
        new_meta["name"] = name
        if rt.namespaced:
            new_meta["namespace"] = old_meta["namespace"]
        new_meta["uid"] = old_meta["uid"]
        new_meta["creationTimestamp"] = old_meta["creationTimestamp"]
        new_meta["resourceVersion"] = old_meta["resourceVersion"]
        for system in ("deletionTimestamp", "deletionGracePeriodSeconds", "generation"):
            if system in old_meta:
                new_meta[system] = old_meta[system]
            else:
                new_meta.pop(system, None)
        if "deletionTimestamp" in old_meta:
            added = [
                f
                for f in new_meta.get("finalizers") or []
                if f not in (old_meta.get("finalizers") or [])
            ]
            if added:
                listed = ", ".join(json.dumps(f) for f in added)
                raise _invalid(
                    rt.kind,
                    rt.group,
                    name,
                    [
                        _FieldError(
                            "FieldValueForbidden",
                            "metadata.finalizers",
                            "Forbidden: no new finalizers can be added if the object is being "
                            f"deleted, found new finalizers []string{{{listed}}}",
                        )
                    ],
                )
        if rt.status_subresource:
            if "status" in old:
                new["status"] = copy.deepcopy(old["status"])
            else:
                new.pop("status", None)
        self._prepare(rt, new, old)
        _order_keys(new)
        if rt.tracks_generation:
            changed = new.get("spec") != old.get("spec")
            if rt.kind == "Deployment":
                changed = changed or new_meta.get("annotations") != old_meta.get("annotations")
            if changed:
                new_meta["generation"] = int(old_meta.get("generation", 0)) + 1
        return new

    def _commit_update(self, rt: ResourceType, old: Obj, new: Obj, *, dry_run: bool = False) -> Obj:
        """Store an update (lock held); a no-op update changes nothing, as in etcd."""
        if new == old:
            return old
        meta = new["metadata"]
        if meta.get("deletionTimestamp") and not _pending_finalizers(rt, new):
            # the last finalizer is gone: the object goes, in its last stored state
            if dry_run:
                return new
            return self._remove(rt, old, "Background")
        if dry_run:
            return new
        self._rv += 1
        meta["resourceVersion"] = str(self._rv)
        self._objects[self._key(rt, new)] = new
        self._emit(rt, "MODIFIED", new, old)
        return new

    def _delete_object(
        self,
        rt: ResourceType,
        old: Obj,
        propagation: str,
        *,
        dry_run: bool = False,
    ) -> Obj:
        """A client's delete (lock held): mark while finalizers remain, else remove."""
        meta = old["metadata"]
        if rt.kind == "Namespace":
            return self._delete_namespace(old, dry_run=dry_run)
        if _pending_finalizers(rt, old):
            if meta.get("deletionTimestamp"):
                return old
            new = copy.deepcopy(old)
            new["metadata"]["deletionTimestamp"] = _now()
            new["metadata"]["deletionGracePeriodSeconds"] = 0
            if new["metadata"].get("generation"):
                new["metadata"]["generation"] += 1
            return self._commit_update(rt, old, new, dry_run=dry_run)
        if dry_run:
            return old
        return self._remove(rt, old, propagation)

    def _remove(self, rt: ResourceType, old: Obj, propagation: str) -> Obj:
        """Remove a stored object, emit DELETED, collect garbage (lock held)."""
        key = self._key(rt, old)
        self._rv += 1
        gone = copy.deepcopy(old)
        gone["metadata"]["resourceVersion"] = str(self._rv)
        del self._objects[key]
        self._uids.pop(old["metadata"]["uid"], None)
        for applied in [k for k in self._applied if k[:3] == key]:
            del self._applied[applied]
        self._emit(rt, "DELETED", gone, old)
        self._collect_garbage(old["metadata"]["uid"], propagation)
        if rt.namespaced:
            self._finalize_namespace(old["metadata"]["namespace"])
        return gone

    def _collect_garbage(self, owner_uid: str, propagation: str) -> None:
        """Background garbage collection of the dependents of a removed owner."""
        for key in sorted(self._objects):
            obj = self._objects.get(key)
            if obj is None:
                continue
            refs = obj["metadata"].get("ownerReferences") or []
            if not any(isinstance(r, dict) and r.get("uid") == owner_uid for r in refs):
                continue
            rt = resolve_kind(key[0])
            alive = [r for r in refs if isinstance(r, dict) and r.get("uid") in self._uids]
            if propagation == "Orphan" or alive:
                new = copy.deepcopy(obj)
                new["metadata"]["ownerReferences"] = [
                    r for r in refs if not (isinstance(r, dict) and r.get("uid") == owner_uid)
                ]
                if not new["metadata"]["ownerReferences"]:
                    del new["metadata"]["ownerReferences"]
                self._commit_update(rt, obj, new)
            else:
                self._delete_object(rt, obj, "Background")

    def _delete_namespace(self, old: Obj, *, dry_run: bool) -> Obj:
        rt = _BY_PATH[("", "v1", "namespaces")]
        if old["metadata"].get("deletionTimestamp"):
            return old
        new = copy.deepcopy(old)
        new["metadata"]["deletionTimestamp"] = _now()
        new["metadata"]["deletionGracePeriodSeconds"] = 0
        new.setdefault("status", {})["phase"] = "Terminating"
        if dry_run:
            return new
        terminating = self._commit_update(rt, old, new)
        answer = copy.deepcopy(terminating)
        name = old["metadata"]["name"]
        for key in sorted(self._objects):
            obj = self._objects.get(key)
            if obj is not None and key[1] == name and key[0] != rt.qualified:
                self._delete_object(resolve_kind(key[0]), obj, "Background")
        self._finalize_namespace(name)
        return answer

    def _finalize_namespace(self, name: str) -> None:
        """The namespace controller: a terminating namespace goes once it is empty."""
        rt = _BY_PATH[("", "v1", "namespaces")]
        namespace = self._objects.get((rt.qualified, "", name))
        if namespace is None or not namespace["metadata"].get("deletionTimestamp"):
            return
        if any(key[1] == name for key in self._objects if key[0] != rt.qualified):
            return
        spec = namespace.get("spec") or {}
        finalizers = spec.get("finalizers") or []
        new = copy.deepcopy(namespace)
        new["spec"] = {**spec, "finalizers": [f for f in finalizers if f != "kubernetes"]}
        if new == namespace:
            if not _pending_finalizers(rt, namespace):
                self._remove(rt, namespace, "Background")
            return
        # the namespace goes as soon as no finalizer is left
        self._commit_update(rt, namespace, new)

    # ------------------------------------------------------------- HTTP

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        query = {key: request.query.getone(key) for key in request.query}
        with self._lock:
            self._requests.append(RecordedRequest(request.method, request.path, query))
            fault = next((f for f in self._faults if f.matches(request.method, request.path)), None)
            if fault is not None:
                fault.times -= 1
                if fault.times <= 0:
                    self._faults.remove(fault)
        pretty = query_bool(query.get("pretty"))
        try:
            if fault is not None:
                raise _fault_error(fault.status, fault.retry_after)
            if (
                self.token is not None
                and request.headers.get("Authorization") != f"Bearer {self.token}"
            ):
                raise ApiError(401, "Unauthorized", "Unauthorized")
            accept = request.headers.get("Accept", "")
            if accept and not any(
                t in accept for t in ("application/json", "*/*", "application/*", "json")
            ):
                raise ApiError(
                    406,
                    "NotAcceptable",
                    "only the following media types are accepted: application/json",
                )
            return await self._dispatch(request, query)
        except ApiError as error:
            return _json_response(error.code, error.status(), error.headers, pretty)
        except Exception as error:
            log.exception("fake API server: %s %s failed", request.method, request.path)
            failure = ApiError(500, "InternalError", f"Internal error occurred: {error}")
            return _json_response(500, failure.status(), pretty=pretty)

    async def _dispatch(self, request: web.Request, query: dict[str, str]) -> web.StreamResponse:
        method = request.method
        parts = [p for p in request.path.split("/") if p]
        pretty = query_bool(query.get("pretty"))
        document = self._discovery(parts)
        if document is not None:
            if method != "GET":
                raise _method_not_allowed()
            if isinstance(document, str):
                return web.Response(text=document, content_type="text/plain")
            return _json_response(200, document, pretty=pretty)
        target = self._parse_target(parts)
        name, sub = target.name, target.subresource

        if name is None:
            if method == "GET":
                if target.watch_prefix or query_bool(query.get("watch")):
                    return await self._watch(request, target, query)
                return _json_response(200, self._list(target, query), pretty=pretty)
            if method == "POST" and not target.all_namespaces:
                body = _decode_body(await request.read(), request.headers.get("Content-Type"))
                code, obj = self._create(target, body, query)
                return _json_response(code, obj, pretty=pretty)
            if method == "DELETE" and not target.all_namespaces:
                options = _delete_options(await request.read(), query)
                return _json_response(
                    200, self._delete_collection(target, query, options), pretty=pretty
                )
            raise _method_not_allowed()

        if target.watch_prefix:
            if method != "GET":
                raise _method_not_allowed()
            return await self._watch(request, target, query)
        if method == "GET":
            return _json_response(200, self._get(target), pretty=pretty)
        if method == "PUT":
            body = _decode_body(await request.read(), request.headers.get("Content-Type"))
            code, obj = self._replace(target, body, query)
            return _json_response(code, obj, pretty=pretty)
        if method == "PATCH":
            code, obj = self._patch(
                target, await request.read(), request.headers.get("Content-Type", ""), query
            )
            return _json_response(code, obj, pretty=pretty)
        if method == "DELETE" and sub is None:
            options = _delete_options(await request.read(), query)
            return _json_response(200, self._delete(target, options, query), pretty=pretty)
        raise _method_not_allowed()

    def _discovery(self, parts: list[str]) -> Obj | str | None:
        if not parts:
            paths = ["/api", "/api/v1", "/apis", "/healthz", "/livez", "/readyz", "/version"]
            for group, versions in _GROUP_VERSIONS.items():
                if group:
                    paths.append(f"/apis/{group}")
                    paths.extend(f"/apis/{group}/{v}" for v in versions)
            return {"paths": sorted(paths)}
        if parts in (["healthz"], ["livez"], ["readyz"]):
            return "ok"
        if parts == ["version"]:
            major, minor, patch = self._server_version
            return {
                "major": str(major),
                "minor": str(minor),
                "gitVersion": f"v{major}.{minor}.{patch}",
                "gitCommit": "0000000000000000000000000000000000000000",
                "gitTreeState": "clean",
                "buildDate": "2024-01-01T00:00:00Z",
                "goVersion": "go1.22.0",
                "compiler": "gc",
                "platform": "linux/amd64",
            }
        if parts == ["api"]:
            return {
                "kind": "APIVersions",
                "versions": _GROUP_VERSIONS[""],
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{self.host}:{self._port}"}
                ],
            }
        if parts == ["apis"]:
            return {
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": [_api_group(g) for g in _GROUP_VERSIONS if g],
            }
        if len(parts) == 2 and parts[0] == "apis" and parts[1] in _GROUP_VERSIONS and parts[1]:
            return {"kind": "APIGroup", "apiVersion": "v1", **_api_group(parts[1])}
        if len(parts) == 2 and parts[0] == "api" and parts[1] in _GROUP_VERSIONS[""]:
            return _resource_list("", parts[1])
        if (
            len(parts) == 3
            and parts[0] == "apis"
            and parts[1]
            and parts[2] in _GROUP_VERSIONS.get(parts[1], [])
        ):
            return {"apiVersion": "v1", **_resource_list(parts[1], parts[2])}
        return None

    def _parse_target(self, parts: list[str]) -> _Target:
        if len(parts) >= 2 and parts[0] == "api":
            group, version, rest = "", parts[1], parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise _path_not_found()
        watch_prefix = bool(rest) and rest[0] == "watch"
        if watch_prefix:
            rest = rest[1:]
        if not rest:
            raise _path_not_found()
        namespaced_path = (
            rest[0] == "namespaces"
            and len(rest) >= 3
            and not (group == "" and len(rest) == 3 and rest[2] in ("status", "finalize"))
        )
        if namespaced_path:
            namespace: str | None = rest[1]
            plural, tail = rest[2], rest[3:]
        else:
            namespace = None
            plural, tail = rest[0], rest[1:]
        rt = _BY_PATH.get((group, version, plural))
        if rt is None or len(tail) > 2:
            raise _path_not_found()
        if namespaced_path and not rt.namespaced:
            raise _path_not_found()
        all_namespaces = rt.namespaced and not namespaced_path
        if all_namespaces and tail:
            raise _path_not_found()
        name = tail[0] if tail else None
        sub = tail[1] if len(tail) == 2 else None
        if sub is not None and (sub != "status" or not rt.status_subresource or watch_prefix):
            raise _path_not_found()
        return _Target(rt, namespace, name, sub, all_namespaces, watch_prefix)

    # ------------------------------------------------------------- verbs

    def _selected(
        self, target: _Target, query: Mapping[str, str]
    ) -> tuple[LabelSelector, FieldSelector]:
        labels = LabelSelector.parse(query.get("labelSelector", ""))
        fields = FieldSelector.parse(query.get("fieldSelector", ""), target.rt)
        if target.watch_prefix and target.name is not None:
            fields = FieldSelector([*fields.terms, ("metadata.name", "=", target.name)])
        return labels, fields

    def _matching(
        self, target: _Target, labels: LabelSelector, fields: FieldSelector
    ) -> list[tuple[tuple[str, str, str], Obj]]:
        rt = target.rt
        return [
            (key, obj)
            for key, obj in sorted(self._objects.items())
            if key[0] == rt.qualified
            and (target.namespace is None or key[1] == target.namespace)
            and labels.matches(obj["metadata"].get("labels"))
            and fields.matches(obj)
        ]

    def _list(self, target: _Target, query: Mapping[str, str]) -> Obj:
        labels, fields = self._selected(target, query)
        limit = _query_int(query, "limit") or 0
        token = query.get("continue")
        with self._lock:
            rv = self._rv
            found = self._matching(target, labels, fields)
        if token:
            try:
                state = json.loads(base64.b64decode(token.encode(), validate=True))
                rv, start = int(state["rv"]), tuple(state["start"])
            except (ValueError, KeyError, TypeError):
                raise _bad_request(f"continue key is not valid: {token}") from None
            found = [(k, o) for k, o in found if k > start]
        metadata: Obj = {"resourceVersion": str(rv)}
        if limit > 0 and len(found) > limit:
            last = found[limit - 1][0]
            metadata["continue"] = base64.b64encode(
                json.dumps({"rv": rv, "start": list(last)}).encode()
            ).decode()
            metadata["remainingItemCount"] = len(found) - limit
            found = found[:limit]
        items = []
        for _, obj in found:
            item = copy.deepcopy(obj)
            # typed lists carry no per-item kind/apiVersion
            item.pop("kind", None)
            item.pop("apiVersion", None)
            items.append(item)
        return {
            "kind": target.rt.list_kind,
            "apiVersion": target.rt.api_version,
            "metadata": metadata,
            "items": items,
        }

    def _get(self, target: _Target) -> Obj:
        assert target.name is not None
        with self._lock:
            obj = self._objects.get((target.rt.qualified, target.namespace or "", target.name))
            if obj is None:
                raise _not_found(target.rt, target.name)
            return copy.deepcopy(obj)

    def _check_body_type(self, rt: ResourceType, body: Obj) -> None:
        api_version, kind = body.get("apiVersion"), body.get("kind")
        if api_version and api_version != rt.api_version:
            raise _bad_request(
                f"the API version in the data ({api_version}) does not match the expected "
                f"API version ({rt.api_version})"
            )
        if kind and kind != rt.kind:
            raise _bad_request(f"the object provided is unrecognized (must be of type {rt.kind})")

    def _check_body_namespace(self, target: _Target, meta: Obj) -> None:
        if target.rt.namespaced:
            given = meta.get("namespace")
            if given and given != target.namespace:
                raise _bad_request(
                    "the namespace of the provided object does not match the namespace sent "
                    "on the request"
                )
            meta["namespace"] = target.namespace
        else:
            meta.pop("namespace", None)

    def _check_namespace_open(self, target: _Target, name: str) -> None:
        if not target.rt.namespaced:
            return
        assert target.namespace is not None
        ns_type = _BY_PATH[("", "v1", "namespaces")]
        namespace = self._objects.get((ns_type.qualified, "", target.namespace))
        if namespace is None:
            raise _not_found(ns_type, target.namespace)
        if namespace["metadata"].get("deletionTimestamp"):
            details = _details(target.rt, name)
            details["causes"] = [
                {
                    "reason": "NamespaceTerminating",
                    "message": f"namespace {target.namespace} is being terminated",
                    "field": "metadata.namespace",
                }
            ]
            raise ApiError(
                403,
                "Forbidden",
                f'{target.rt.qualified} "{name}" is forbidden: unable to create new content in '
                f"namespace {target.namespace} because it is being terminated",
                details,
            )

    def _create(self, target: _Target, body: Obj, query: Mapping[str, str]) -> tuple[int, Obj]:
        rt = target.rt
        self._check_body_type(rt, body)
        meta = _meta(body)
        self._check_body_namespace(target, meta)
        dry_run = _dry_run(query)
        with self._lock:
            return 201, copy.deepcopy(self._create_checked(target, body, dry_run))

    def _create_checked(self, target: _Target, body: Obj, dry_run: bool) -> Obj:
        rt = target.rt
        meta = body["metadata"]
        name = str(meta.get("name") or "")
        generate = str(meta.get("generateName") or "")
        if not name and generate:
            for _ in range(8):
                name = generate[:58] + "".join(random.choices(_NAME_ALPHABET, k=5))
                if (rt.qualified, target.namespace or "", name) not in self._objects:
                    break
            meta["name"] = name
        if not name:
            raise _invalid(
                rt.kind,
                rt.group,
                "",
                [
                    _FieldError(
                        "FieldValueRequired",
                        "metadata.name",
                        "Required value: name or generateName is required",
                    )
                ],
            )
        errors = _name_errors(rt, name)
        if errors:
            raise _invalid(rt.kind, rt.group, name, errors)
        self._check_namespace_open(target, name)
        if (rt.qualified, target.namespace or "", name) in self._objects:
            raise _already_exists(rt, name)
        if meta.get("resourceVersion"):
            raise ApiError(500, "", "resourceVersion should not be set on objects to be created")
        return self._create_object(rt, body, dry_run=dry_run)

    def _check_name(self, target: _Target, meta: Obj) -> None:
        given = str(meta.get("name") or "")
        if given != target.name:
            raise _bad_request(
                f"the name of the object ({given}) does not match the name on the URL "
                f"({target.name})"
            )

    def _replace(self, target: _Target, body: Obj, query: Mapping[str, str]) -> tuple[int, Obj]:
        rt = target.rt
        assert target.name is not None
        self._check_body_type(rt, body)
        meta = _meta(body)
        self._check_name(target, meta)
        self._check_body_namespace(target, meta)
        dry_run = _dry_run(query)
        with self._lock:
            old = self._objects.get((rt.qualified, target.namespace or "", target.name))
            if old is None:
                if target.subresource is not None or not rt.allow_create_on_update:
                    raise _not_found(rt, target.name)
                return 201, copy.deepcopy(self._create_checked(target, body, dry_run))
            new = self._updated_object(rt, old, body, target.subresource)
            return 200, copy.deepcopy(self._commit_update(rt, old, new, dry_run=dry_run))

    def _patch(
        self, target: _Target, raw: bytes, content_type: str, query: Mapping[str, str]
    ) -> tuple[int, Obj]:
        rt = target.rt
        assert target.name is not None
        media = content_type.split(";", 1)[0].strip().lower()
        manager = query.get("fieldManager", "")
        errors: list[_FieldError] = []
        if media == APPLY_PATCH and not manager:
            errors.append(
                _FieldError(
                    "FieldValueRequired",
                    "fieldManager",
                    "Required value: is required for apply patch",
                )
            )
        if media != APPLY_PATCH and "force" in query:
            errors.append(
                _FieldError(
                    "FieldValueForbidden",
                    "force",
                    "Forbidden: may not be specified for non-apply patch",
                )
            )
        if errors:
            raise _invalid("PatchOptions", "meta.k8s.io", "", errors)
        if media not in (MERGE_PATCH, STRATEGIC_PATCH, JSON_PATCH, APPLY_PATCH):
            raise ApiError(
                415,
                "UnsupportedMediaType",
                "the body of the request was in an unknown format - accepted media types include: "
                f"{JSON_PATCH}, {MERGE_PATCH}, {APPLY_PATCH}, {STRATEGIC_PATCH}",
            )
        try:
            patch = yaml.safe_load(raw) if media == APPLY_PATCH else json.loads(raw or b"null")
        except (ValueError, yaml.YAMLError) as error:
            raise _bad_request(f"error decoding patch: {error}") from None
        dry_run = _dry_run(query)
        with self._lock:
            old = self._objects.get((rt.qualified, target.namespace or "", target.name))
            if media == APPLY_PATCH:
                return self._apply(
                    target,
                    old=old,
                    config=patch,
                    manager=manager,
                    force=query_bool(query.get("force")),
                    dry_run=dry_run,
                )
            if old is None:
                raise _not_found(rt, target.name)
            try:
                if media == JSON_PATCH:
                    patched = json_patch(copy.deepcopy(old), patch)
                else:
                    if not isinstance(patch, dict):
                        raise _bad_request("the patch must be a JSON object")
                    merge = merge_patch if media == MERGE_PATCH else strategic_merge_patch
                    patched = merge(copy.deepcopy(old), patch)
            except _PatchError as error:
                raise ApiError(422, "Invalid", str(error)) from None
            if not isinstance(patched, dict):
                raise ApiError(422, "Invalid", "the patched object is not an object")
            self._check_body_type(rt, patched)
            meta = _meta(patched)
            self._check_name(target, meta)
            self._check_body_namespace(target, meta)
            new = self._updated_object(rt, old, patched, target.subresource)
            return 200, copy.deepcopy(self._commit_update(rt, old, new, dry_run=dry_run))

    def _apply(
        self,
        target: _Target,
        *,
        old: Obj | None,
        config: Any,
        manager: str,
        force: bool,
        dry_run: bool,
    ) -> tuple[int, Obj]:
        """Server-side apply (simplified: see the module docstring); lock held."""
        rt = target.rt
        assert target.name is not None
        if not isinstance(config, dict):
            raise _bad_request("the apply configuration must be an object")
        if not config.get("apiVersion") or not config.get("kind"):
            raise _bad_request("apiVersion and kind must be set in an apply configuration")
        self._check_body_type(rt, config)
        meta = _meta(config)
        self._check_name(target, meta)
        self._check_body_namespace(target, meta)
        if meta.get("managedFields") is not None:
            raise _bad_request("metadata.managedFields must be nil")
        key = (rt.qualified, target.namespace or "", target.name, target.subresource or "")
        managers = self._applied.get(key, {})

        def relevant(path: tuple[str, ...]) -> bool:
            if path in _IDENTITY_PATHS:
                return False
            if not rt.status_subresource:
                return True
            return (path[0] == "status") == (target.subresource == "status")

        applied = {p: v for p, v in _leaves(config).items() if relevant(p)}

        if old is None:
            if target.subresource is not None:
                raise _not_found(rt, target.name)
            created = self._create_checked(target, copy.deepcopy(config), dry_run)
            if not dry_run:
                self._applied[key] = {manager: applied}
            return 201, copy.deepcopy(created)

        conflicts: list[tuple[str, tuple[str, ...]]] = []
        for other, owned in managers.items():
            if other == manager:
                continue
            conflicts.extend(
                (other, path)
                for path, value in applied.items()
                if path in owned and owned[path] != value
            )
        if conflicts and not force:
            count = len(conflicts)
            causes = [
                {
                    "reason": "FieldManagerConflict",
                    "message": f'conflict with "{other}"',
                    "field": "." + ".".join(path),
                }
                for other, path in conflicts
            ]
            if count == 1:
                summary = f"{causes[0]['message']}: {causes[0]['field']}"
            else:
                summary = "conflicts with " + ", ".join(
                    f"{c['message']}: {c['field']}" for c in causes
                )
            details = _details(rt, target.name)
            details["causes"] = causes
            raise ApiError(
                409,
                "Conflict",
                f"Apply failed with {count} conflict{'s' if count > 1 else ''}: {summary}",
                details,
            )
        new_managers = {m: dict(owned) for m, owned in managers.items()}
        for other, path in conflicts:
            new_managers[other].pop(path, None)

        live = copy.deepcopy(old)
        before = new_managers.get(manager, {})
        still_owned = {path for m, owned in new_managers.items() if m != manager for path in owned}
        for path in before:
            if path not in applied and path not in still_owned:
                _remove_path(live, path)
        merged = merge_patch(live, copy.deepcopy(config))
        if "resourceVersion" not in meta:
            merged["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        new = self._updated_object(rt, old, merged, target.subresource)
        result = self._commit_update(rt, old, new, dry_run=dry_run)
        if not dry_run and result["metadata"]["uid"] in self._uids:
            new_managers[manager] = applied
            self._applied[key] = new_managers
        return 200, copy.deepcopy(result)

    def _delete(self, target: _Target, options: Obj, query: Mapping[str, str]) -> Obj:
        rt = target.rt
        assert target.name is not None
        with self._lock:
            old = self._objects.get((rt.qualified, target.namespace or "", target.name))
            if old is None:
                raise _not_found(rt, target.name)
            _check_preconditions(rt, old, options)
            propagation = str(options.get("propagationPolicy") or "Background")
            result = self._delete_object(rt, old, propagation, dry_run=_dry_run(query))
            return self._delete_answer(rt, result)

    def _delete_answer(self, rt: ResourceType, obj: Obj) -> Obj:
        """The object if it stays (finalizers) or the kind returns it, else a Status."""
        if rt.returns_deleted_object or _pending_finalizers(rt, obj):
            return copy.deepcopy(obj)
        details = _details(rt, obj["metadata"]["name"])
        details["uid"] = obj["metadata"]["uid"]
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": details,
        }

    def _delete_collection(self, target: _Target, query: Mapping[str, str], options: Obj) -> Obj:
        labels, fields = self._selected(target, query)
        propagation = str(options.get("propagationPolicy") or "Background")
        dry_run = _dry_run(query)
        with self._lock:
            rv = self._rv
            items = []
            for key, obj in self._matching(target, labels, fields):
                if key not in self._objects:
                    continue
                item = copy.deepcopy(obj)
                self._delete_object(target.rt, obj, propagation, dry_run=dry_run)
                item.pop("kind", None)
                item.pop("apiVersion", None)
                items.append(item)
        return {
            "kind": target.rt.list_kind,
            "apiVersion": target.rt.api_version,
            "metadata": {"resourceVersion": str(rv)},
            "items": items,
        }

    # ------------------------------------------------------------- watch

    async def _watch(
        self, request: web.Request, target: _Target, query: Mapping[str, str]
    ) -> web.StreamResponse:
        rt = target.rt
        labels, fields = self._selected(target, query)
        bookmarks = query_bool(query.get("allowWatchBookmarks"))
        timeout = _query_int(query, "timeoutSeconds") or 0
        limits = [t for t in (timeout, self.max_watch_seconds) if t]
        duration = min(limits) if limits else math.inf
        since = query.get("resourceVersion", "")
        start_rv: int | None = None
        if since not in ("", "0"):
            if not since.isdigit():
                raise _bad_request(f'invalid resource version: "{since}"')
            start_rv = int(since)

        recorded = RecordedRequest(request.method, request.path, dict(query))
        watcher = _Watcher(rt, target.namespace, labels, fields, recorded)
        expired: ApiError | None = None
        with self._lock:
            if start_rv is None:
                for _, obj in self._matching(target, labels, fields):
                    watcher.queue.append(("ADDED", obj))
            elif start_rv < self._history_floor:
                expired = ApiError(
                    410,
                    "Expired",
                    f"too old resource version: {start_rv} ({self._history_floor})",
                )
            else:
                for event in self._history:
                    if event.rv > start_rv:
                        seen = watcher.transform(event)
                        if seen is not None:
                            watcher.queue.append(seen)
            if expired is None:
                self._watchers.add(watcher)
                self._watch_changed.notify_all()

        response = web.StreamResponse(
            status=200,
            headers={"Content-Type": JSON, "Cache-Control": "no-cache, private"},
        )
        try:
            await response.prepare(request)
            if expired is not None:
                await response.write(_dumps({"type": "ERROR", "object": expired.status()}))
                await response.write_eof()
                return response
            await self._stream(response, watcher, duration, bookmarks)
            if watcher.close_reason == "abort":
                if request.transport is not None:
                    request.transport.abort()
                return response
            await response.write_eof()
        except ConnectionError:
            pass  # the client went away
        finally:
            with self._lock:
                self._watchers.discard(watcher)
                self._watch_changed.notify_all()
        return response

    async def _stream(
        self,
        response: web.StreamResponse,
        watcher: _Watcher,
        duration: float,
        bookmarks: bool,
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + duration
        next_bookmark = loop.time() + self.bookmark_interval if bookmarks else math.inf

        def bookmark(rv: int) -> bytes:
            obj = {
                "kind": watcher.rt.kind,
                "apiVersion": watcher.rt.api_version,
                "metadata": {"resourceVersion": str(rv)},
            }
            return _dumps({"type": "BOOKMARK", "object": obj})

        while True:
            with self._lock:
                events = list(watcher.queue)
                watcher.queue.clear()
                watcher.wake.clear()
                rv = self._rv
                reason = watcher.close_reason
            if reason in ("abort", "shutdown"):
                return
            if events:
                await response.write(b"".join(_dumps({"type": t, "object": o}) for t, o in events))
            if reason == "drop":
                return
            now = loop.time()
            if now >= deadline:
                if bookmarks:
                    await response.write(bookmark(rv))
                return
            if now >= next_bookmark:
                await response.write(bookmark(rv))
                next_bookmark = now + self.bookmark_interval
            wait = min(deadline, next_bookmark) - now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(watcher.wake.wait(), timeout=max(wait, 0))


# --------------------------------------------------------------------------- helpers (HTTP)


def _method_not_allowed() -> ApiError:
    return ApiError(
        405,
        "MethodNotAllowed",
        "the server does not allow this method on the requested resource",
        {},
    )


def _path_not_found() -> ApiError:
    return ApiError(404, "NotFound", "the server could not find the requested resource", {})


def _dry_run(query: Mapping[str, str]) -> bool:
    value = query.get("dryRun")
    if value is None or value == "":
        return False
    if value != "All":
        raise _invalid(
            "CreateOptions",
            "meta.k8s.io",
            "",
            [
                _FieldError(
                    "FieldValueNotSupported",
                    "dryRun",
                    f'Unsupported value: "{value}": supported values: "All"',
                )
            ],
        )
    return True


def _decode_body(raw: bytes, content_type: str | None) -> Obj:
    media = (content_type or JSON).split(";", 1)[0].strip().lower()
    if not raw.strip():
        raise _bad_request("the body of the request was empty")
    try:
        if media in ("application/yaml", "application/x-yaml", "text/yaml"):
            body = yaml.safe_load(raw)
        elif media in (JSON, "*/*", ""):
            body = json.loads(raw)
        else:
            raise ApiError(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format - accepted media types include: "
                f"{JSON}, application/yaml",
            )
    except (ValueError, yaml.YAMLError) as error:
        raise _bad_request(f"couldn't decode the request body: {error}") from None
    if not isinstance(body, dict):
        raise _bad_request("the object provided is unrecognized (must be an object)")
    return body


def _delete_options(raw: bytes, query: Mapping[str, str]) -> Obj:
    options: Obj = {}
    if raw.strip():
        try:
            parsed = json.loads(raw)
        except ValueError as error:
            raise _bad_request(f"couldn't decode DeleteOptions: {error}") from None
        if isinstance(parsed, dict):
            options.update(parsed)
    if "propagationPolicy" in query:
        options["propagationPolicy"] = query["propagationPolicy"]
    if query_bool(query.get("orphanDependents")):
        options["propagationPolicy"] = "Orphan"
    policy = options.get("propagationPolicy")
    if policy is not None and policy not in ("Orphan", "Background", "Foreground"):
        raise _invalid(
            "DeleteOptions",
            "meta.k8s.io",
            "",
            [
                _FieldError(
                    "FieldValueNotSupported",
                    "propagationPolicy",
                    f'Unsupported value: "{policy}": supported values: '
                    '"Foreground", "Background", "Orphan", "nil"',
                )
            ],
        )
    return options


def _check_preconditions(rt: ResourceType, obj: Obj, options: Obj) -> None:
    pre = options.get("preconditions") or {}
    meta = obj["metadata"]
    if pre.get("uid") and pre["uid"] != meta["uid"]:
        raise _conflict(
            rt,
            meta["name"],
            f"Precondition failed: UID in precondition: {pre['uid']}, "
            f"UID in object meta: {meta['uid']}",
        )
    if pre.get("resourceVersion") and pre["resourceVersion"] != meta["resourceVersion"]:
        raise _conflict(
            rt,
            meta["name"],
            "Precondition failed: ResourceVersion in precondition: "
            f"{pre['resourceVersion']}, ResourceVersion in object meta: {meta['resourceVersion']}",
        )


def _api_group(group: str) -> Obj:
    versions = [{"groupVersion": f"{group}/{v}", "version": v} for v in _GROUP_VERSIONS[group]]
    return {"name": group, "versions": versions, "preferredVersion": versions[0]}


def _resource_list(group: str, version: str) -> Obj:
    resources: list[Obj] = []
    for rt in RESOURCES:
        if rt.group != group or rt.version != version:
            continue
        entry: Obj = {
            "name": rt.plural,
            "singularName": rt.singular,
            "namespaced": rt.namespaced,
            "kind": rt.kind,
            "verbs": rt.verbs,
        }
        if rt.short_names:
            entry["shortNames"] = list(rt.short_names)
        if rt.categories:
            entry["categories"] = list(rt.categories)
        resources.append(entry)
        if rt.status_subresource:
            resources.append(
                {
                    "name": f"{rt.plural}/status",
                    "singularName": "",
                    "namespaced": rt.namespaced,
                    "kind": rt.kind,
                    "verbs": ["get", "patch", "update"],
                }
            )
    group_version = f"{group}/{version}" if group else version
    return {"kind": "APIResourceList", "groupVersion": group_version, "resources": resources}

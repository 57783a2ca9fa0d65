"""Facts about this process, read from the kernel: descriptors, resident
memory, the cgroup's memory limit. One place for the /proc and rlimit I/O
that the data plane (caps, overload), the runtime (`/status`, start-up)
and their tests share. The parsing of what the files say is kept apart
from their reading (pure functions, unit-tested).
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
from pathlib import Path
from typing import Any

log = logging.getLogger("meshgate.process")

CGROUP_ROOT = Path("/sys/fs/cgroup")  # where cgroup v2 is mounted


def descriptor_limit() -> int | None:
    """The soft RLIMIT_NOFILE; None when unlimited."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def resident_memory() -> int:
    """Resident set size in bytes, from /proc/self/statm (one small read,
    no parsing of /proc/self/status). Raises OSError when it cannot be
    read: not Linux, or (EMFILE) no descriptor left to open it with."""
    with open("/proc/self/statm", "rb") as f:
        fields = f.read().split()
    try:
        return int(fields[1]) * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, IndexError) as exc:
        raise OSError(f"unexpected /proc/self/statm: {fields!r}") from exc


def cgroup_memory_limit(root: Path | None = None) -> int | None:
    """The lowest cgroup v2 memory.max on the way from this process's
    cgroup (from /proc/self/cgroup) up to the mount's root; None without a
    limit. Inside a container the mount's root is usually the container's
    own cgroup, whose memory.max is the container's limit."""
    try:
        own = cgroup_path(Path("/proc/self/cgroup").read_text())
    except OSError:
        own = None
    mount = root or CGROUP_ROOT
    found: list[int] = []
    for rel in cgroup_dirs(own):
        try:
            limit = memory_max((mount / rel / "memory.max").read_text())
        except OSError:
            continue  # not this process's view of the hierarchy, or no limit file
        if limit is not None:
            found.append(limit)
    return min(found, default=None)


def raise_descriptor_limit() -> None:
    """Raise the soft RLIMIT_NOFILE to the hard limit, as HAProxy and nginx do:
    the default soft limit (often 1,024) would cap meshgate at a few hundred
    proxied connections, while the hard limit is what the administrator
    allowed. The connection cap (`limits.max_connections`) is derived from
    the result."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        # Unlimited hard limit: the kernel's per-process ceiling still applies.
        try:
            with open("/proc/sys/fs/nr_open") as f:
                hard = int(f.read())
        except (OSError, ValueError):
            return
    if soft == resource.RLIM_INFINITY or soft >= hard:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError) as exc:
        log.warning(
            "cannot raise the descriptor limit",
            extra={"fields": {"soft": soft, "hard": hard, "error": str(exc)}},
        )
        return
    log.info("descriptor limit raised", extra={"fields": {"from": soft, "to": hard}})


def open_fds() -> int | None:
    """Descriptors open now; None when /proc cannot say (not Linux)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


def _resident() -> int | None:
    try:
        return resident_memory()
    except OSError:  # not Linux
        return None


def process_json() -> dict[str, Any]:
    """What a leak would show: tasks, descriptors, resident memory."""
    return {
        "pid": os.getpid(),
        "tasks": len(asyncio.all_tasks()),
        "open_fds": open_fds(),
        "fd_limit": descriptor_limit(),
        "rss": _resident(),
    }


# -- cgroup v2 memory limit: parsing --------------------------------------------------------------
def cgroup_path(proc_self_cgroup: str) -> str | None:
    """This process's cgroup v2 path from /proc/self/cgroup ("0::/path")."""
    for line in proc_self_cgroup.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "" and path.startswith("/"):
            return path
    return None


def cgroup_dirs(path: str | None) -> list[str]:
    """The cgroup `path` and its ancestors, deepest first, relative to the
    cgroup2 mount ("" is the root): a limit set on any of them applies."""
    parts = [p for p in (path or "").split("/") if p and p not in (".", "..")]
    return ["/".join(parts[:n]) for n in range(len(parts), -1, -1)]


def memory_max(text: str) -> int | None:
    """The value of a memory.max file: bytes, or None for "max" or garbage."""
    value = text.strip()
    if not value.isdigit():
        return None
    limit = int(value)
    return limit if limit > 0 else None

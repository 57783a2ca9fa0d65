"""Tunables, each with the reason for its value.

Per-backend and per-listener values in the config override the defaults here;
these are what a config that says nothing gets.
"""

from __future__ import annotations

import os

# A SYN to a dead mesh peer is never answered; 5 s is long enough for a
# WireGuard handshake (which takes up to one RTT plus rekey) and short enough
# that failover to the next endpoint feels immediate to a person.
CONNECT_TIMEOUT = 5.0

# Idle TCP connections are closed after an hour, like HAProxy's `timeout
# tunnel` in common setups: long enough for kubectl exec / watch streams.
IDLE_TIMEOUT = 3600.0

# After one side sent FIN, the other has this long to finish (HAProxy calls it
# `timeout client-fin`); keeps a dead half-open peer from pinning a connection.
HALF_CLOSED_TIMEOUT = 60.0

# UDP has no close: a flow with no datagram either way for this long is
# forgotten. nexd uses a fixed value; here it is configurable per listener.
UDP_FLOW_IDLE_TIMEOUT = 60.0

# Each UDP flow owns an upstream socket (a file descriptor); bound them so a
# spoofed-source flood cannot exhaust descriptors.
UDP_MAX_FLOWS = 10_000

# Datagrams that arrive while a new flow's upstream socket is being set up are
# queued; beyond this many they are dropped (UDP may lose packets anyway).
UDP_PENDING_DATAGRAMS = 64

# On SIGTERM or listener removal, established connections get this long to
# finish before they are closed.
DRAIN_TIMEOUT = 30.0

# On SIGTERM, /readyz fails at once but everything keeps serving for this
# long before the drain starts, so load balancers and Kubernetes Endpoints
# stop sending new clients first (ingress-nginx gets the same from a preStop
# sleep). 0 for a plain process, which nothing routes to by readiness; the
# operator's proxy Pods use PROXY_SHUTDOWN_GRACE. A second SIGTERM ends it.
SHUTDOWN_GRACE = 0.0
PROXY_SHUTDOWN_GRACE = 5.0

# Outlier ejection (failures in a row, the doubling period, the share of a
# pool that may be out) and active health checks are set per backend: their
# defaults live with the schema in config/model.py (`Outlier`, `HealthCheck`),
# and a pool reads them from its `PoolSpec`.

# Write-buffer marks of a transport that no listener spec covers (tests, an
# upstream connection made without one): above the high mark the opposite
# side stops reading (backpressure), below the low one it reads again.
# Connections of a listener use its `buffer_limit` instead (config
# limits.connection_buffer, 64 KiB by default) and a quarter of it. The limit
# is soft: uvloop reads up to 256 KiB per call and one read is written whole,
# so a direction holds at most the limit plus one read. The splice switch
# below does not depend on it: it counts read sizes, which the kernel's
# receive queue decides (a paused source is read in large pieces when it
# resumes), not the write buffer.
WRITE_HIGH_WATER = 256 * 1024
# Unsent bytes a client socket may queue in the kernel (TCP_NOTSENT_LOWAT,
# dataplane/listener.limit_unsent): enough to keep a fast client's window
# full between two wake-ups, little enough that a slow reader holds no more.
NOTSENT_LOWAT = 128 * 1024
WRITE_LOW_WATER = 64 * 1024

# Zero-copy relay of bulk TCP flows (dataplane/splice.py): once a direction
# of a plain TCP relay (no TLS on either side) has moved SPLICE_AFTER bytes in
# reads of at least SPLICE_MIN_READ bytes, that direction switches to
# os.splice through a kernel pipe of its own: no copy into Python, about
# 1 MiB per system call, ~25% less proxy CPU per byte. Only bulk flows:
# splice costs ~15% on small-message rates and ~20% on ping-pong latency, so
# a keep-alive connection of small requests (reads of a few hundred bytes)
# never switches however long it lives. MESHGATE_SPLICE=0 turns it off;
# without os.splice (not Linux) or when a pipe cannot be made, the relay
# silently stays in user space.
SPLICE = os.environ.get("MESHGATE_SPLICE", "1") != "0"
SPLICE_AFTER = 256 * 1024
SPLICE_MIN_READ = 64 * 1024
# Kernel pipe size per direction (F_SETPIPE_SZ; smaller when the per-user
# pipe quota refuses it): one splice moves up to this much.
SPLICE_PIPE_SIZE = 1024 * 1024

# The admin endpoint: loopback only by default, so metrics and config are not
# exposed on the mesh unless asked for.
ADMIN_LISTEN = "127.0.0.1:9901"

# Listen backlog: bursts of new connections from a mesh of many devices.
LISTEN_BACKLOG = 1024

# Set in each process of `meshgate run --workers N`: listeners are bound with
# SO_REUSEPORT so the kernel spreads connections (and UDP flows, by their
# addresses) over the workers. Off otherwise: another process on the port
# would silently take part of the traffic, where a refused bind is honest.
REUSE_PORT = False

# The environment a worker process is started with: its index, and the file
# it writes its admin address to once it serves (see supervisor.py).
WORKER_INDEX_ENV = "MESHGATE_WORKER_INDEX"
WORKER_REPORT_ENV = "MESHGATE_WORKER_REPORT"

# Certificate, key and CA files are checked this often for changes (renewal
# by cert-manager or certbot); a change triggers the same reload as SIGHUP.
# Polling, not inotify: Kubernetes Secret volumes swap a symlink, which
# inotify watches on the file itself miss.
CERT_POLL_INTERVAL = 2.0

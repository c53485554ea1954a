"""gunicorn settings for the gate, and why.

- worker_class gevent: a stream spends its life waiting on sockets; one greenlet per request lets
  a worker hold thousands of streams. gunicorn's gevent worker monkey-patches socket, ssl,
  threading and time in each worker *before* it imports the app, so redis-py, urllib3 and our
  threading locks/threads (the lease keeper) are cooperative. Never set preload_app: it would
  import the app (redis, urllib3, ssl) in the master before the patch.
- worker_connections 10000: the ceiling of concurrent connections per worker (streams plus idle
  keep-alive connections from the ALB).
- keepalive 310 s: above the ALB idle timeout (300 s), so the ALB always closes an idle connection
  first and never sends a request down a connection the gate is closing (the 502 race). It also
  bounds how long a client may take to send its request headers.
- timeout 30 s: with gevent the worker heartbeats from its own loop every second however long a
  stream lasts, so this only kills a worker whose event loop is blocked (a CPU-bound bug), never
  a long stream.
- graceful_timeout 630 s: on reload/scale-in a worker stops accepting and lets running requests
  finish; 600 s request_timeout_s plus margin, so no stream is cut by a deploy.
- accesslog off: the app writes its own JSON access log (runtime/gate/access_log.py), with the
  request id, key display form and replica, and never the key.
- PROMETHEUS_MULTIPROC_DIR: set (and emptied) in the master before any worker starts, so every
  worker writes its metrics to mmap files that /metrics aggregates; a dead worker's files are
  marked dead so its live gauges (ws_in_flight) drop out.

Every value may be overridden with the WS_GATE_* environment variables below or CLI flags.
"""

from __future__ import annotations

import glob
import os
import tempfile
from typing import Any

bind = os.environ.get("WS_GATE_BIND", "127.0.0.1:8080")
workers = int(os.environ.get("WS_GATE_WORKERS", str(os.cpu_count() or 1)))
# gunicorn's gevent worker, answering its own parser refusals (malformed request line, oversized
# headers) with OpenAI-shaped JSON instead of an HTML page (runtime/gate/worker.py).
worker_class = "runtime.gate.worker.GateWorker"
worker_connections = int(os.environ.get("WS_GATE_WORKER_CONNECTIONS", "10000"))
keepalive = int(os.environ.get("WS_GATE_KEEPALIVE", "310"))
timeout = int(os.environ.get("WS_GATE_TIMEOUT", "30"))
graceful_timeout = int(os.environ.get("WS_GATE_GRACEFUL_TIMEOUT", "630"))
backlog = 4096
preload_app = False
accesslog = None
errorlog = "-"
loglevel = os.environ.get("WS_GATE_LOGLEVEL", "warning")
proc_name = "warmstart-gate"
# Request-line and header limits stay at gunicorn's defaults (4094 bytes, 100 fields): the gate
# needs nothing bigger, and smaller is safer.


def on_starting(server: Any) -> None:
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        path = tempfile.mkdtemp(prefix="ws-gate-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    os.makedirs(path, exist_ok=True)
    for f in glob.glob(os.path.join(path, "*.db")):
        os.remove(f)  # counters from a previous run would be added to this one's


def child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)

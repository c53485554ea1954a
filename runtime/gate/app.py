"""The gate's Flask application: auth → validate → admit (or hold) → relay → release.

`create_app(config, pool=, store=, keys=)` is the one entry point (gunicorn, `warmstart local`,
tests). The decisions live in admission.py (pure) and the stores; this module is the HTTP shell.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from runtime.gate import access_log, errors, metrics
from runtime.gate.admission import Admitted, KeyLimits, RateHeaders, busy_retry_after, key_headers
from runtime.gate.config import GateConfig
from runtime.gate.errors import GateError
from runtime.gate.leases import Lease, LeaseKeeper
from runtime.gate.proxy import ClientGone, DisconnectWatch, Upstreams, abort, chunks
from runtime.gate.store import AdmissionStore, SlotSpec, open_store
from runtime.gate.validation import ROUTES, Parsed, parse
from runtime.pool.base import PoolSnapshot, ReplicaPool
from warmstart.spec import PLANS

if TYPE_CHECKING:
    import urllib3

    from runtime.gate.keys import KeyRecord, KeyStore

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
KEEPALIVE = b": keep-alive\n\n"
WAKE_CLAIM_S = 30.0  # one pool.wake() per this window across every gate process
DEMAND_EVERY_S = 0.5
STOPPED_RETRY_S = 120.0
HOLD_RETRY_S = 15.0


def build_pool(config: GateConfig) -> ReplicaPool:
    """The pool the config names; backends other than `static` are imported only when used."""
    kind = config.pool.kind
    if kind == "static":
        from runtime.pool.static import StaticPool

        return StaticPool(config.pool.upstreams, config.replica_cap)
    if kind == "local":
        from runtime.pool.local import LocalPool  # type: ignore[import-not-found,unused-ignore]

        pool: ReplicaPool = LocalPool(config)
        return pool
    if kind == "aws":
        from runtime.pool.aws import AwsPool

        return AwsPool(config)
    if kind == "k8s":
        from runtime.pool.k8s import from_config

        return from_config(config.pool, cap=config.replica_cap)
    raise ValueError(f"pool.kind={kind!r} is not supported")


def _open_keys(config: GateConfig) -> KeyStore:
    from runtime.gate.keys import CachedKeyStore, open_key_store

    return CachedKeyStore(open_key_store(config.keys), config.key_cache_ttl_s)


def fmt_duration(seconds: float) -> str:
    """OpenAI's x-ratelimit-reset-* format: 20ms, 1.5s, 6m0s, 1h2m3s."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{max(1, math.ceil(seconds * 1000))}ms"
    if seconds < 60:
        return f"{math.ceil(seconds * 1000) / 1000:g}s"
    total = math.ceil(seconds)
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m}m{s}s" if h else f"{m}m{s}s"


def _deadline(seconds: float) -> AbstractContextManager[Any]:
    """A wall-clock bound on a blocking section, where gevent can enforce it (under gunicorn)."""
    try:
        from gevent import Timeout, monkey
    except ImportError:
        return nullcontext()
    if not monkey.is_module_patched("socket"):
        return nullcontext()
    return Timeout(seconds, errors.body_timeout(seconds))


@dataclass
class Ctx:
    """What the access log and the metrics need to know about one request."""

    request_id: str
    route: str
    t0: float
    key: str | None = None
    replica: str | None = None
    status: int = 0
    reason: str | None = None
    stream: bool = False
    ttft: float | None = None
    queue_wait: float | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    disconnected: bool = False
    logged: bool = False
    ratelimit: RateHeaders | None = None
    limits: KeyLimits | None = None  # set once the key passed auth: the x-ratelimit-* headers describe it


class Gate:
    def __init__(self, config: GateConfig, pool: ReplicaPool, store: AdmissionStore, keys: KeyStore) -> None:
        self.config = config
        self.pool = pool
        self.store = store
        self.keys = keys
        self.plan_max = config.max_concurrency
        self.keeper = LeaseKeeper(store, config.lease_ttl_s)
        self.upstreams = Upstreams(connect_timeout_s=5.0, read_timeout_s=config.request_timeout_s,
                                   per_replica=config.replica_cap)
        store.on_expired = metrics.LEASE_LEAKS.inc
        self.keeper.start()  # sweeps other gates' expired leases even while this one is idle
        self._waiting = 0
        self._lock = threading.Lock()
        self._last_demand = 0.0
        self._mean_duration = 1.0  # EWMA of admitted request durations: feeds the 429 Retry-After

    # -- auth -------------------------------------------------------------------------------------
    def authenticate(self, ctx: Ctx) -> KeyRecord:
        from runtime.gate.keys import KeyStoreUnavailable, display_form, hash_key, is_well_formed

        header = request.headers.get("Authorization", "")
        if not header.strip():
            raise errors.missing_key()
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not is_well_formed(token):
            raise errors.invalid_key("(malformed key)")
        display = display_form(token[:12], token[-4:])
        ctx.key = display
        try:
            record = self.keys.get(hash_key(token))
        except KeyStoreUnavailable:
            # An outage, not a bad key (never 401). Anything else from the store is a bug and
            # surfaces as one: a 500 with the request id, the traceback in the server log.
            access_log.logger.getChild("keys").warning("key store unavailable", exc_info=True)
            raise errors.key_store_unavailable() from None
        if record is None:
            raise errors.invalid_key(display)
        now = time.time()
        if record.revoked_at is not None:
            raise errors.key_forbidden(display, "has been revoked", "key_revoked")
        if record.expires_at is not None and now >= record.expires_at:
            raise errors.key_forbidden(display, "has expired", "key_expired")
        if record.endpoint != self.config.endpoint:
            raise errors.key_forbidden(display, f"is not valid for endpoint {self.config.endpoint!r}",
                                       "key_wrong_endpoint")
        return record

    def limits_of(self, record: KeyRecord) -> KeyLimits:
        daily = record.daily_cap
        if daily is None and record.kind == "playground":
            plan = PLANS.get(record.plan) or PLANS[self.config.plan]
            daily = plan.playground_daily_requests
        return KeyLimits(record.key_hash, record.rate_per_min, daily, record.expires_at, record.endpoint)

    # -- body -------------------------------------------------------------------------------------
    def read_body(self) -> bytes:
        limit = self.config.max_body_bytes
        length = request.content_length
        if length is not None and length > limit:
            raise errors.too_large(limit)  # refused before a byte of the body is read
        buf = bytearray()
        with _deadline(self.config.body_timeout_s):
            stream = request.stream
            while True:
                chunk = stream.read(min(65536, limit + 1 - len(buf)))
                if not chunk:
                    break
                buf += chunk
                if len(buf) > limit:
                    raise errors.too_large(limit)
        return bytes(buf)

    # -- admission ----------------------------------------------------------------------------------
    def _snapshot(self) -> PoolSnapshot:
        try:
            snap = self.pool.snapshot()
        except Exception:
            access_log.logger.getChild("pool").exception("pool snapshot failed")
            raise errors.pool_unavailable() from None
        metrics.set_replicas(len(snap.ready), snap.starting)
        return snap

    def refresh_replicas(self) -> None:
        """ws_replicas from the pool now: a scrape must see a scale-to-zero even with no traffic."""
        try:
            snap = self.pool.snapshot()
        except Exception:
            access_log.logger.getChild("pool").exception("pool snapshot failed")
            return
        metrics.set_replicas(len(snap.ready), snap.starting)

    def key_budget(self, limits: KeyLimits) -> RateHeaders | None:
        """The key's x-ratelimit-* values without spending anything (docs/gate.md: its rate, else its
        daily cap, else the plan's concurrency budget); None if the store cannot be read."""
        try:
            now, usage = self.store.usage(limits)
            rl = key_headers(now, limits, usage)
            if rl is None:
                rl = RateHeaders(self.plan_max, max(0, self.plan_max - self.store.total_in_flight()), 0.0)
            return rl
        except Exception:
            access_log.logger.getChild("store").warning("key usage read failed", exc_info=True)
            return None

    def _demand(self, in_flight: int, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_demand < DEMAND_EVERY_S:
            return
        self._last_demand = now
        try:
            self.pool.report_demand(in_flight + self._waiting)
            self.pool.report_waiting(self._waiting)
        except Exception:
            access_log.logger.getChild("pool").exception("report_demand failed")

    def try_admit(self, limits: KeyLimits, lease_id: str, ctx: Ctx) -> tuple[Lease, str] | None:
        """One admission attempt: a lease and the replica URL, None to keep holding, or GateError."""
        snap = self._snapshot()
        if self.config.stopped or snap.stopped:
            raise errors.stopped(STOPPED_RETRY_S)
        urls = {r.id: r.url for r in snap.ready}
        slots = [SlotSpec(r.id, r.cap) for r in snap.ready]
        try:
            d = self.store.admit(limits, slots, self.plan_max, lease_id, self.config.lease_ttl_s)
        except Exception:
            access_log.logger.getChild("store").exception("admission store failed")
            raise errors.store_unavailable() from None
        # Refusals for capacity carry the concurrency budget; the headers describe the key's own
        # budget instead (read lazily in after_request), so they mean one thing on every response.
        ctx.ratelimit = d.headers if isinstance(d, Admitted) or d.reason in ("rate", "daily_cap") else None
        if isinstance(d, Admitted):
            lease = self.keeper.hold(lease_id, d.replica_id)
            self._demand(d.in_flight)
            return lease, urls[d.replica_id]
        if d.reason == "scope":
            raise errors.key_forbidden(ctx.key or "", f"is not valid for endpoint {self.config.endpoint!r}",
                                       "key_wrong_endpoint")
        if d.reason == "expired":
            raise errors.key_forbidden(ctx.key or "", "has expired", "key_expired")
        if d.reason == "daily_cap":
            raise errors.daily_cap(d.headers.limit, d.headers.reset_s)
        if d.reason == "rate":
            raise errors.rate_limited(d.retry_after_s or 1.0, d.headers.limit)
        busy = busy_retry_after(self._mean_duration, d.in_flight)
        if d.reason == "budget" or (d.reason == "capacity" and not snap.growing):
            raise errors.over_budget(busy, d.headers.limit)
        if d.reason == "no_replicas" and not snap.growing and self.store.claim("wake", WAKE_CLAIM_S):
            try:
                self.pool.wake()  # from zero: one wake for the whole endpoint, then everyone holds
            except Exception:
                access_log.logger.getChild("pool").exception("pool wake failed; holding anyway")
        self._demand(d.in_flight + 1, force=True)
        return None

    def hold(self, limits: KeyLimits, lease_id: str, ctx: Ctx, until: float, deadline: float,
             watch: DisconnectWatch) -> tuple[Lease, str] | None:
        """Retry admission until admitted, `until` (→ None), or `deadline` (→ 503)."""
        pause = 0.02
        waiting = False
        try:
            while True:
                got = self.try_admit(limits, lease_id, ctx)
                if got is not None:
                    return got
                now = time.monotonic()
                if now >= deadline:
                    eta = self.pool.snapshot().detail.get("eta_s")
                    retry = float(eta) if eta and eta.replace(".", "", 1).isdigit() else HOLD_RETRY_S
                    raise errors.capacity_unavailable(min(retry, 120.0), now - ctx.t0)
                if now >= until or watch.closed:
                    return None
                if not waiting:
                    waiting = True
                    with self._lock:
                        self._waiting += 1
                time.sleep(min(pause, until - now, deadline - now))
                pause = min(pause * 1.5, 0.25)
        finally:
            if waiting:
                with self._lock:
                    self._waiting -= 1

    def observe_duration(self, seconds: float) -> None:
        self._mean_duration += 0.05 * (seconds - self._mean_duration)

    # -- relay ------------------------------------------------------------------------------------
    def open_upstream(self, url: str, parsed: Parsed, ctx: Ctx, watch: DisconnectWatch) -> urllib3.BaseHTTPResponse:
        """Send the request; raises ClientGone if the caller leaves before the response headers
        (urllib3 then closes that connection, which is how vLLM learns to abort)."""
        with watch.interruptible():
            resp = self.upstreams.open(url, parsed.path, parsed.body, ctx.request_id)
        watch.on_close(lambda: abort(resp))
        return resp

    def relay(self, resp: urllib3.BaseHTTPResponse, lease: Lease, ctx: Ctx, watch: DisconnectWatch,
              started: float) -> Iterator[bytes]:
        events = 0
        try:
            for chunk in chunks(resp, self.config.request_timeout_s):
                if ctx.ttft is None:
                    ctx.ttft = time.monotonic() - ctx.t0
                    metrics.child(metrics.TTFT, ctx.route).observe(ctx.ttft)
                events += chunk.count(b"data: ")
                if b'"usage"' in chunk:
                    _usage_from_sse(chunk, ctx)
                yield chunk
            resp.release_conn()
            ctx.status = 200
        except GateError as e:
            ctx.status, ctx.reason = e.status, e.reason
            if not watch.closed:
                yield e.sse()
        except GeneratorExit:
            ctx.disconnected = True
            raise
        finally:
            if watch.closed or ctx.disconnected:
                ctx.disconnected, ctx.status = True, 499
            watch.stop()
            if ctx.status != 200:
                abort(resp)
            lease.release()
            self.observe_duration(time.monotonic() - started)
            if ctx.tokens_out is None and events:
                ctx.tokens_out = max(0, events - 1)  # one event per token chunk, minus [DONE]
            self.finish(ctx)

    def finish(self, ctx: Ctx) -> None:
        if ctx.logged:
            return
        ctx.logged = True
        elapsed = time.monotonic() - ctx.t0
        metrics.child(metrics.REQUESTS, ctx.route, str(ctx.status)).inc()
        metrics.child(metrics.DURATION, ctx.route).observe(elapsed)
        if ctx.tokens_in:
            metrics.child(metrics.TOKENS, "in").inc(ctx.tokens_in)
        if ctx.tokens_out:
            metrics.child(metrics.TOKENS, "out").inc(ctx.tokens_out)
        access_log.emit(
            request_id=ctx.request_id, endpoint=self.config.endpoint, route=ctx.route, status=ctx.status, key=ctx.key, replica=ctx.replica,
            stream=ctx.stream, duration_ms=elapsed * 1000, ttft_ms=None if ctx.ttft is None else ctx.ttft * 1000,
            queue_ms=None if ctx.queue_wait is None else ctx.queue_wait * 1000, tokens_in=ctx.tokens_in,
            tokens_out=ctx.tokens_out, reason=ctx.reason, disconnected=ctx.disconnected or None,
        )


def _usage_from_sse(chunk: bytes, ctx: Ctx) -> None:
    for line in chunk.split(b"\n"):
        if line.startswith(b"data: {") and b'"usage"' in line:
            try:
                usage = json.loads(line[6:]).get("usage") or {}
            except ValueError:
                continue
            _take_usage(usage, ctx)


def _take_usage(usage: Any, ctx: Ctx) -> None:
    if isinstance(usage, dict):
        if isinstance(usage.get("prompt_tokens"), int):
            ctx.tokens_in = usage["prompt_tokens"]
        if isinstance(usage.get("completion_tokens"), int):
            ctx.tokens_out = usage["completion_tokens"]


def create_app(
    config: GateConfig,
    *,
    pool: ReplicaPool | None = None,
    store: AdmissionStore | None = None,
    keys: KeyStore | None = None,
) -> Flask:
    access_log.configure()
    gate = Gate(
        config,
        pool if pool is not None else build_pool(config),
        store if store is not None else open_store(config.store, config.endpoint),
        keys if keys is not None else _open_keys(config),
    )
    app = Flask("warmstart.gate")
    app.extensions["warmstart.gate"] = gate
    default_headers = RateHeaders(gate.plan_max, gate.plan_max, 0.0)

    try:
        from runtime.gate.playground import bp as playground_bp
    except ModuleNotFoundError as e:
        if e.name != "runtime.gate.playground":
            raise
    else:
        app.register_blueprint(playground_bp)

    @app.before_request
    def _start() -> None:
        rid = request.headers.get("X-Request-Id", "")
        rid = rid if _REQUEST_ID.fullmatch(rid) else uuid.uuid4().hex
        rule = request.url_rule.rule if request.url_rule is not None else "other"
        g.ctx = Ctx(request_id=rid, route=rule, t0=time.monotonic())

    @app.after_request
    def _headers(resp: Response) -> Response:
        ctx: Ctx | None = g.get("ctx")
        if ctx is None:  # the request failed before _start (e.g. routing): still answer with an id
            ctx = Ctx(request_id=uuid.uuid4().hex, route="other", t0=time.monotonic())
        resp.headers["X-Request-Id"] = ctx.request_id
        rl = ctx.ratelimit
        if rl is None and ctx.limits is not None:
            rl = gate.key_budget(ctx.limits)
        rl = rl or default_headers
        resp.headers.setdefault("x-ratelimit-limit-requests", str(rl.limit))
        resp.headers.setdefault("x-ratelimit-remaining-requests", str(max(0, rl.remaining)))
        resp.headers.setdefault("x-ratelimit-reset-requests", fmt_duration(rl.reset_s))
        if not resp.is_streamed:
            ctx.status = ctx.status or resp.status_code
            gate.finish(ctx)
        return resp

    @app.errorhandler(GateError)
    def _gate_error(e: GateError) -> Response:
        ctx: Ctx | None = g.get("ctx")
        if ctx is not None:
            ctx.status, ctx.reason = e.status, e.reason
        metrics.child(metrics.REJECTIONS, str(e.status), e.reason or "other").inc()
        resp = Response(json.dumps(e.body()), status=e.status, mimetype="application/json")
        for k, v in e.response_headers().items():
            resp.headers[k] = v
        if e.status in (408, 413):
            resp.headers["Connection"] = "close"  # the rest of the body is not worth reading
        return resp

    @app.errorhandler(HTTPException)
    def _http_error(e: HTTPException) -> Response:
        code = e.code or 400
        if code == 404:
            return _gate_error(errors.not_found(request.path[:200]))
        if code == 405:
            return _gate_error(errors.method_not_allowed(request.method, request.path[:200]))
        if code == 413:
            return _gate_error(errors.too_large(config.max_body_bytes))
        return _gate_error(GateError(code, e.description or "Bad request.", "invalid_request_error",
                                     "invalid_request", reason="http"))

    @app.errorhandler(Exception)
    def _crash(e: Exception) -> Response:
        ctx: Ctx | None = g.get("ctx")
        rid = ctx.request_id if ctx is not None else None
        access_log.logger.getChild("error").exception("unhandled error (request %s)", rid)
        return _gate_error(errors.internal(rid))

    # -- routes -----------------------------------------------------------------------------------
    @app.get("/healthz")
    def healthz() -> Response:
        snap = gate._snapshot()
        ok = gate.store.ping()
        body = {"status": "ok" if ok else "store_unavailable", "endpoint": config.endpoint,
                "ready": len(snap.ready), "starting": snap.starting, "stopped": config.stopped or snap.stopped}
        return Response(json.dumps(body), status=200 if ok else 503, mimetype="application/json")

    @app.get("/metrics")
    def metrics_route() -> Response:
        gate.refresh_replicas()
        data, ctype = metrics.render()
        return Response(data, mimetype=ctype.split(";")[0], content_type=ctype)

    def _model_obj(name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": 0, "owned_by": "warmstart", "root": config.served_name}

    @app.get("/v1/models")
    def models() -> Response:
        g.ctx.limits = gate.limits_of(gate.authenticate(g.ctx))
        body = {"object": "list", "data": [_model_obj(config.served_name), _model_obj("default")]}
        return Response(json.dumps(body), mimetype="application/json")

    @app.get("/v1/models/<path:model>")
    def model(model: str) -> Response:
        g.ctx.limits = gate.limits_of(gate.authenticate(g.ctx))
        if model not in (config.served_name, "default"):
            raise errors.model_not_found(model[:200])
        return Response(json.dumps(_model_obj(model)), mimetype="application/json")

    def proxied() -> Response:
        ctx: Ctx = g.ctx
        record = gate.authenticate(ctx)
        limits = ctx.limits = gate.limits_of(record)
        parsed = parse(request.path, gate.read_body(), config.served_name, config.max_tokens_limit)
        ctx.stream = parsed.stream
        lease_id = uuid.uuid4().hex
        watch = DisconnectWatch(request.environ)
        deadline = ctx.t0 + config.hold_timeout_s
        until = min(deadline, ctx.t0 + config.keepalive_interval_s) if parsed.stream else deadline
        try:
            got = gate.hold(limits, lease_id, ctx, until, deadline, watch)
        except BaseException:
            watch.stop()
            raise
        if got is None:
            if watch.closed:
                watch.stop()
                ctx.status, ctx.disconnected = 499, True
                return Response(b"", status=499)
            # Still short of capacity after one keep-alive period: commit to the stream and hold on
            # inside it, so the client (and the ALB) see bytes while replicas come up.
            return _sse(_held(limits, lease_id, ctx, deadline, parsed, watch))
        return _start_upstream(got, ctx, parsed, watch)

    def _start_upstream(got: tuple[Lease, str], ctx: Ctx, parsed: Parsed, watch: DisconnectWatch) -> Response:
        lease, url = got
        ctx.replica = lease.replica_id
        ctx.queue_wait = time.monotonic() - ctx.t0
        metrics.QUEUE_WAIT.observe(ctx.queue_wait)
        started = time.monotonic()
        try:
            resp = gate.open_upstream(url, parsed, ctx, watch)
        except ClientGone:
            watch.stop()
            lease.release()
            ctx.status, ctx.disconnected = 499, True
            return Response(b"", status=499)
        except BaseException:
            watch.stop()
            lease.release()
            raise
        if parsed.stream and resp.status == 200:
            return _sse(gate.relay(resp, lease, ctx, watch, started))
        try:
            with _upstream_deadline(config.request_timeout_s):
                data = resp.read()
            resp.release_conn()
        except GateError:
            abort(resp)
            raise
        except Exception:
            abort(resp)
            if watch.closed:
                ctx.disconnected = True
                return Response(b"", status=499)
            raise errors.upstream_failed("connection closed mid-response") from None
        finally:
            watch.stop()
            lease.release()
            gate.observe_duration(time.monotonic() - started)
        if resp.status == 200 and data[:1] == b"{":
            try:
                _take_usage(json.loads(data).get("usage"), ctx)
            except (ValueError, AttributeError):
                pass
        ctype = resp.headers.get("Content-Type", "application/json")
        return Response(data, status=resp.status, content_type=ctype)

    def _held(limits: KeyLimits, lease_id: str, ctx: Ctx, deadline: float, parsed: Parsed,
              watch: DisconnectWatch) -> Iterator[bytes]:
        got: tuple[Lease, str] | None = None
        try:
            yield KEEPALIVE
            while got is None:
                until = min(deadline, time.monotonic() + config.keepalive_interval_s)
                got = gate.hold(limits, lease_id, ctx, until, deadline, watch)
                if got is None:
                    if watch.closed:
                        ctx.status, ctx.disconnected = 499, True
                        return
                    yield KEEPALIVE
            lease, url = got
            ctx.replica = lease.replica_id
            ctx.queue_wait = time.monotonic() - ctx.t0
            metrics.QUEUE_WAIT.observe(ctx.queue_wait)
            started = time.monotonic()
            got = None  # the relay owns the lease from here
            try:
                resp = gate.open_upstream(url, parsed, ctx, watch)
            except BaseException as e:
                lease.release()
                if isinstance(e, ClientGone):
                    ctx.status, ctx.disconnected = 499, True
                    return
                raise
            if resp.status != 200:
                body = resp.read()
                abort(resp)
                lease.release()
                ctx.status = resp.status
                yield b"event: error\ndata: " + _error_json(body, resp.status) + b"\n\n"
                return
            yield from gate.relay(resp, lease, ctx, watch, started)
        except GateError as e:
            ctx.status, ctx.reason = e.status, e.reason
            metrics.child(metrics.REJECTIONS, str(e.status), e.reason or "other").inc()
            if not watch.closed:
                yield e.sse()
        finally:
            if got is not None:
                got[0].release()
            watch.stop()
            gate.finish(ctx)

    def _sse(body: Iterator[bytes]) -> Response:
        resp = Response(body, status=200, mimetype="text/event-stream")
        resp.headers["Cache-Control"] = "no-cache"
        resp.headers["X-Accel-Buffering"] = "no"
        return resp

    for path in ROUTES:
        app.add_url_rule(path, endpoint=path, view_func=proxied, methods=["POST"])

    return app


def _upstream_deadline(seconds: float) -> AbstractContextManager[Any]:
    try:
        from gevent import Timeout, monkey
    except ImportError:
        return nullcontext()
    if not monkey.is_module_patched("socket"):
        return nullcontext()
    return Timeout(seconds, errors.upstream_timeout(seconds))


def _error_json(body: bytes, status: int) -> bytes:
    try:
        data = json.loads(body)
        if isinstance(data, dict) and isinstance(data.get("error"), dict):
            return json.dumps(data).encode()
    except ValueError:
        pass
    return json.dumps(errors.upstream_failed(f"status {status}").body()).encode()

"""Replica pool over the Kubernetes API: the vLLM Deployment of the EKS substrate.

Discovery: ready replicas are the ready endpoints of the vLLM Service's EndpointSlices (a pod is
there only after its readiness probe, i.e. the one-token warm-up, passed). Capacity: the
Deployment's scale subresource (`spec.replicas`), the same thing `kubectl scale` and the HPA use.

Every write carries the `resourceVersion` that was read (optimistic concurrency): several gate
processes may wake the pool at once, and a stale writer gets 409 Conflict instead of undoing a
scale-up another gate made. Reads are cached for `cache_ttl_s` so the request path costs no round
trip; one caller refreshes while concurrent callers keep the previous snapshot (single flight).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.rest import ApiException

from runtime.pool.base import PoolSnapshot, Replica, ReplicaPool
from warmstart.errors import OperationError
from warmstart.spec import replicas_needed

if TYPE_CHECKING:
    from runtime.gate.config import PoolConfig

log = logging.getLogger(__name__)

# Set by `warmstart endpoint stop` on the Deployment: the gate answers 503 and never wakes it.
STOPPED_ANNOTATION = "warmstart.dev/stopped"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"  # EndpointSlice -> Service (Kubernetes contract)
MERGE_PATCH = "application/merge-patch+json"  # the client would send a dict as json-patch otherwise


def api_client_from_environment() -> k8s.ApiClient:
    """In a pod: its service account. Elsewhere: $KUBECONFIG (read now, not at import) or ~/.kube/config."""
    try:
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            cfg = k8s.Configuration()
            k8s_config.load_incluster_config(client_configuration=cfg)
            return k8s.ApiClient(cfg)
        return k8s_config.new_client_from_config(config_file=os.environ.get("KUBECONFIG"))
    except k8s_config.ConfigException as e:
        raise OperationError(
            f"no Kubernetes credentials ({e}); run the gate in the cluster or set KUBECONFIG"
        ) from None


def _why(e: Exception) -> str:
    if isinstance(e, ApiException):
        return f"HTTP {e.status} {e.reason}"
    return type(e).__name__


class K8sPool(ReplicaPool):
    kind = "k8s"

    def __init__(
        self,
        *,
        namespace: str,
        deployment: str,
        service: str | None = None,
        cap: int = 30,
        min_replicas: int = 0,
        max_replicas: int = 1,
        idle_timeout_s: float = 300.0,
        port: int = 8000,
        api_client: k8s.ApiClient | None = None,
        cache_ttl_s: float = 2.0,
        request_timeout_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if min_replicas > max_replicas:
            raise ValueError(f"min_replicas={min_replicas} exceeds max_replicas={max_replicas}; lower it")
        self.namespace = namespace
        self.deployment = deployment
        self.service = service or deployment
        self.cap = cap
        self.min_replicas = min_replicas
        self.max_replicas = max_replicas
        self.idle_timeout_s = idle_timeout_s
        self.port = port
        self._api_client = api_client or api_client_from_environment()
        self._apps = k8s.AppsV1Api(self._api_client)
        self._discovery = k8s.DiscoveryV1Api(self._api_client)
        self._ttl = cache_ttl_s
        self._timeout = request_timeout_s
        self._clock = clock
        self._lock = threading.Lock()
        self._refreshing = threading.Lock()
        self._scale_lock = threading.Lock()
        self._snap: PoolSnapshot | None = None
        self._snap_at = float("-inf")
        self._desired = 0
        self._below_since: float | None = None

    # -- reads ----------------------------------------------------------------------------------

    def snapshot(self) -> PoolSnapshot:
        now = self._clock()
        with self._lock:
            snap, fresh = self._snap, now - self._snap_at < self._ttl
        if snap is not None and fresh:
            return snap
        if not self._refreshing.acquire(blocking=snap is None):
            return snap  # type: ignore[return-value]  # someone else is refreshing; snap is not None here
        try:
            return self._refresh()
        except (ApiException, urllib3.exceptions.HTTPError) as e:
            if snap is None:
                raise OperationError(
                    f"Kubernetes API: cannot read deployment {self.namespace}/{self.deployment} ({_why(e)}); "
                    "check the gate's service account and the API server"
                ) from None
            log.warning("pool refresh failed (%s); serving the previous snapshot", _why(e))
            return snap
        finally:
            self._refreshing.release()

    def invalidate(self) -> None:
        with self._lock:
            self._snap_at = float("-inf")

    def _refresh(self) -> PoolSnapshot:
        dep = self._apps.read_namespaced_deployment(
            self.deployment, self.namespace, _request_timeout=self._timeout
        )
        annotations = dep.metadata.annotations or {}
        stopped = str(annotations.get(STOPPED_ANNOTATION, "")).lower() == "true"
        desired = int(dep.spec.replicas or 0)
        ready = self._ready_replicas()
        snap = PoolSnapshot(
            ready=ready,
            starting=max(desired - len(ready), 0),
            stopped=stopped,
            detail={
                "deployment": f"{self.namespace}/{self.deployment}",
                "desired": str(desired),
                "generation": str(dep.metadata.generation or 0),
            },
        )
        with self._lock:
            self._snap, self._snap_at, self._desired = snap, self._clock(), desired
        return snap

    def _ready_replicas(self) -> tuple[Replica, ...]:
        slices = self._discovery.list_namespaced_endpoint_slice(
            self.namespace,
            label_selector=f"{SERVICE_NAME_LABEL}={self.service}",
            _request_timeout=self._timeout,
        )
        seen: dict[str, Replica] = {}
        for sl in slices.items:
            if sl.address_type not in ("IPv4", "IPv6"):
                continue
            port = self._port_of(sl.ports or [])
            for ep in sl.endpoints or []:
                cond = ep.conditions
                # `ready` is unset while the controller is unsure: treat it as not ready.
                if cond is None or cond.ready is not True or cond.terminating:
                    continue
                name = ep.target_ref.name if ep.target_ref is not None else ep.addresses[0]
                for addr in ep.addresses[:1]:
                    host = f"[{addr}]" if sl.address_type == "IPv6" else addr
                    seen[name] = Replica(id=name, url=f"http://{host}:{port}", cap=self.cap)
        return tuple(seen[k] for k in sorted(seen))

    def _port_of(self, ports: list[Any]) -> int:
        for p in ports:
            if p.name == "http" and p.port:
                return int(p.port)
        return int(ports[0].port) if ports and ports[0].port else self.port

    # -- writes ---------------------------------------------------------------------------------

    def wake(self) -> None:
        snap = self.snapshot()
        if snap.stopped or snap.ready or self._desired > 0:
            return
        self._scale_to(max(1, self.min_replicas), only_up=True)

    def report_demand(self, in_flight: int) -> None:
        snap = self.snapshot()
        if snap.stopped:
            return
        needed = replicas_needed(in_flight, self.cap, self.min_replicas, self.max_replicas)
        now = self._clock()
        if needed >= self._desired:
            self._below_since = None
            if needed > self._desired:
                self._scale_to(needed, only_up=True)
            return
        # Scale in only after demand stayed below capacity for the idle timeout (Flex: to zero).
        if self._below_since is None:
            self._below_since = now
        elif now - self._below_since >= self.idle_timeout_s:
            self._scale_to(needed, only_up=False)
            self._below_since = None

    def _scale_to(self, replicas: int, *, only_up: bool) -> None:
        """PATCH the scale subresource with the read resourceVersion as a precondition.

        Serialized within the process (a burst of wakes becomes one write); across processes the
        precondition settles it.
        """
        with self._scale_lock:
            self._scale_to_locked(replicas, only_up=only_up)

    def _scale_to_locked(self, replicas: int, *, only_up: bool) -> None:
        try:
            scale = self._apps.read_namespaced_deployment_scale(
                self.deployment, self.namespace, _request_timeout=self._timeout
            )
            current = int(scale.spec.replicas or 0)
            if current == replicas or (only_up and current > replicas):
                self._desired = current
                return
            body = {
                "metadata": {"resourceVersion": scale.metadata.resource_version},
                "spec": {"replicas": replicas},
            }
            self._apps.patch_namespaced_deployment_scale(
                self.deployment, self.namespace, body,
                _content_type=MERGE_PATCH, _request_timeout=self._timeout,
            )
            log.info("scaled %s/%s %d -> %d", self.namespace, self.deployment, current, replicas)
            self._desired = replicas
        except ApiException as e:
            if e.status != 409:
                raise OperationError(
                    f"Kubernetes API: cannot scale {self.namespace}/{self.deployment} to {replicas} "
                    f"({_why(e)}); the gate's role needs get/patch on deployments/scale"
                ) from None
            log.info("scale of %s/%s changed concurrently; keeping the other writer's", self.namespace,
                     self.deployment)
        except urllib3.exceptions.HTTPError as e:
            raise OperationError(
                f"Kubernetes API: cannot scale {self.namespace}/{self.deployment} ({_why(e)})"
            ) from None
        finally:
            self.invalidate()

    def close(self) -> None:
        self._api_client.close()


def from_config(pool: PoolConfig, *, cap: int, api_client: k8s.ApiClient | None = None) -> K8sPool:
    """The pool a gate config of kind 'k8s' describes (the gate's create_app calls this lazily)."""
    if pool.kind != "k8s" or not pool.namespace or not pool.deployment:
        raise ValueError(f"pool.kind={pool.kind!r} is not a complete k8s pool config")
    return K8sPool(
        namespace=pool.namespace,
        deployment=pool.deployment,
        service=pool.service,
        cap=cap,
        min_replicas=pool.min_replicas,
        max_replicas=pool.max_replicas,
        idle_timeout_s=pool.idle_timeout_s,
        api_client=api_client,
    )

"""A small Kubernetes API server over real HTTP, for testing code that uses the `kubernetes` client.

It serves the few endpoints the k8s replica pool calls, from response fixtures shaped like the
API server's own JSON (kube_fixtures/), and keeps their state so a test can watch a scale-up
happen: GET deployment, GET/PATCH the scale subresource (with the API server's rules: a dict body
must be a merge/strategic-merge patch, a stale `metadata.resourceVersion` is 409 Conflict, a
negative replica count is 422), and list EndpointSlices by `kubernetes.io/service-name`.
Requests need `Authorization: Bearer <token>` like a real cluster. The fixture `kube_api` starts one
per test; `kubeconfig` writes a kubeconfig pointing at it and sets $KUBECONFIG.
"""

from __future__ import annotations

import copy
import json
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

FIXTURES = Path(__file__).parent / "kube_fixtures"
TOKEN = "kube-test-token"

_DEPLOY = re.compile(r"^/apis/apps/v1/namespaces/([^/]+)/deployments/([^/]+)(/scale)?$")
_SLICES = re.compile(r"^/apis/discovery\.k8s\.io/v1/namespaces/([^/]+)/endpointslices$")


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return data


@dataclass
class Recorded:
    method: str
    path: str
    content_type: str
    body: Any


@dataclass
class _Deployment:
    obj: dict[str, Any]
    pods: list[dict[str, Any]] = field(default_factory=list)  # EndpointSlice endpoints
    port: int = 8000  # the Service's port the slices report (tests point it at a local upstream)


class KubeApi:
    """State + HTTP front. Thread-safe: the client and the test touch it concurrently."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._deployments: dict[tuple[str, str], _Deployment] = {}
        self._rv = 200000
        self.requests: list[Recorded] = []
        self.scale_writes = 0  # PATCHes that changed the scale (not the ones refused)
        # Called after a scale GET is answered: lets a test play "another gate wrote meanwhile".
        self.after_scale_read: Callable[[KubeApi], None] | None = None
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- state the test drives --------------------------------------------------------------

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def add_deployment(
        self, namespace: str, name: str, *, replicas: int = 0, annotations: dict[str, str] | None = None
    ) -> None:
        obj = fixture("deployment")
        obj["metadata"].update(name=name, namespace=namespace)
        obj["metadata"]["annotations"].update(annotations or {})
        obj["spec"]["replicas"] = replicas
        with self._lock:
            obj["metadata"]["resourceVersion"] = self._next_rv()
            self._deployments[(namespace, name)] = _Deployment(obj)

    def replicas(self, namespace: str, name: str) -> int:
        with self._lock:
            return int(self._deployments[(namespace, name)].obj["spec"]["replicas"])

    def set_replicas(self, namespace: str, name: str, replicas: int) -> None:
        """Another writer (kubectl, a second gate) scales the Deployment."""
        with self._lock:
            d = self._deployments[(namespace, name)]
            d.obj["spec"]["replicas"] = replicas
            d.obj["metadata"]["resourceVersion"] = self._next_rv()

    def set_pods(
        self, namespace: str, name: str, pods: list[tuple[str, str, bool]], *, terminating: tuple[str, ...] = (),
        port: int | None = None,
    ) -> None:
        """The Deployment's pods as the EndpointSlice controller would list them: (name, ip, ready)."""
        eps = []
        for pod, ip, ready in pods:
            ep = fixture("endpoint")
            ep["addresses"] = [ip]
            ep["conditions"] = {"ready": ready, "serving": ready, "terminating": pod in terminating}
            ep["targetRef"].update(name=pod, namespace=namespace)
            eps.append(ep)
        with self._lock:
            d = self._deployments[(namespace, name)]
            d.pods = eps
            if port is not None:
                d.port = port

    def patches(self) -> list[Recorded]:
        return [r for r in self.requests if r.method == "PATCH"]

    # -- HTTP -------------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out as separate writes: without this, delayed ACKs add ~40 ms each.
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, code: int, body: dict[str, Any]) -> None:
                raw = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def _status(self, code: int, reason: str, message: str) -> None:
                body = fixture("status-conflict")
                body.update(code=code, reason=reason, message=message)
                body.pop("details", None)
                self._send(code, body)

            def _authorized(self) -> bool:
                if self.headers.get("Authorization") == f"Bearer {TOKEN}":
                    return True
                self._status(401, "Unauthorized", "Unauthorized")
                return False

            def _record(self, body: Any = None) -> None:
                with api._lock:
                    api.requests.append(
                        Recorded(self.command, self.path, self.headers.get("Content-Type", ""), body)
                    )

            def do_GET(self) -> None:
                self._record()
                if not self._authorized():
                    return
                parts = urlsplit(self.path)
                if m := _DEPLOY.match(parts.path):
                    ns, name, scale = m.groups()
                    with api._lock:
                        d = api._deployments.get((ns, name))
                        obj = copy.deepcopy(d.obj) if d else None
                    if obj is None:
                        return self._status(404, "NotFound", f'deployments.apps "{name}" not found')
                    if scale:
                        self._send(200, _scale_of(obj))
                        if api.after_scale_read is not None:
                            hook, api.after_scale_read = api.after_scale_read, None
                            hook(api)
                        return None
                    return self._send(200, obj)
                if m := _SLICES.match(parts.path):
                    ns = m.group(1)
                    selector = parse_qs(parts.query).get("labelSelector", [""])[0]
                    return self._send(200, api._slice_list(ns, selector))
                return self._status(404, "NotFound", "the server could not find the requested resource")

            def do_PATCH(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"null")
                except ValueError:
                    body = None
                self._record(body)
                if not self._authorized():
                    return
                m = _DEPLOY.match(urlsplit(self.path).path)
                if not m or not m.group(3):
                    return self._status(405, "MethodNotAllowed", "only the scale subresource is patched here")
                ctype = self.headers.get("Content-Type", "").split(";")[0]
                if ctype == "application/json-patch+json" and not isinstance(body, list):
                    return self._status(
                        400, "BadRequest",
                        "json: cannot unmarshal object into Go value of type jsonpatch.Patch",
                    )
                if ctype not in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
                    return self._status(415, "UnsupportedMediaType", f"the body of the request was in an unknown format ({ctype})")
                if not isinstance(body, dict):
                    return self._status(400, "BadRequest", "patch body must be a JSON object")
                ns, name, _ = m.groups()
                with api._lock:
                    d = api._deployments.get((ns, name))
                    if d is None:
                        return self._status(404, "NotFound", f'deployments.apps "{name}" not found')
                    want_rv = (body.get("metadata") or {}).get("resourceVersion")
                    if want_rv is not None and want_rv != d.obj["metadata"]["resourceVersion"]:
                        conflict = fixture("status-conflict")
                        return self._send(409, conflict)
                    replicas = (body.get("spec") or {}).get("replicas")
                    if not isinstance(replicas, int) or replicas < 0:
                        return self._status(422, "Invalid", f"spec.replicas: Invalid value: {replicas!r}")
                    d.obj["spec"]["replicas"] = replicas
                    d.obj["metadata"]["resourceVersion"] = api._next_rv()
                    api.scale_writes += 1
                    obj = copy.deepcopy(d.obj)
                return self._send(200, _scale_of(obj))

        return Handler

    def _slice_list(self, namespace: str, selector: str) -> dict[str, Any]:
        want: dict[str, str] = {}
        for term in filter(None, selector.split(",")):
            k, _, v = term.partition("=")
            want[k] = v
        items = []
        with self._lock:
            for (ns, name), d in self._deployments.items():
                sl = fixture("endpointslice")
                sl["metadata"].update(name=f"{name}-7xq2p", namespace=ns)
                sl["metadata"]["labels"]["kubernetes.io/service-name"] = name
                sl["metadata"]["ownerReferences"][0]["name"] = name
                sl["endpoints"] = copy.deepcopy(d.pods)
                sl["ports"][0]["port"] = d.port
                if ns == namespace and all(sl["metadata"]["labels"].get(k) == v for k, v in want.items()):
                    items.append(sl)
        return {
            "kind": "EndpointSliceList",
            "apiVersion": "discovery.k8s.io/v1",
            "metadata": {"resourceVersion": str(self._rv)},
            "items": items,
        }


def _scale_of(deployment: dict[str, Any]) -> dict[str, Any]:
    scale = fixture("scale")
    meta = deployment["metadata"]
    scale["metadata"].update(
        name=meta["name"], namespace=meta["namespace"], resourceVersion=meta["resourceVersion"]
    )
    scale["spec"]["replicas"] = deployment["spec"]["replicas"]
    scale["status"]["replicas"] = deployment["spec"]["replicas"]
    return scale


def write_kubeconfig(path: Path, server: str, token: str = TOKEN) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": server}}],
                "users": [{"name": "gate", "user": {"token": token}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "gate"}}],
                "current-context": "fake",
            }
        )
    )
    return path


@pytest.fixture()
def kube_api() -> Iterator[KubeApi]:
    api = KubeApi()
    yield api
    api.stop()


@pytest.fixture()
def kubeconfig(kube_api: KubeApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """$KUBECONFIG pointing at `kube_api`, the way an operator's laptop points at a cluster."""
    path = write_kubeconfig(tmp_path / "kubeconfig", kube_api.url)
    monkeypatch.setenv("KUBECONFIG", str(path))
    # Outside a pod: the in-cluster service-account path must not be taken.
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    return path

"""The one interface the gate talks to, whatever runs the replicas.

Backends: `static` (fixed URLs), `local` (vLLM subprocesses on this machine), `aws` (an ASG).
A pool never blocks the gate's request path on slow I/O: `snapshot()` answers from state the
backend keeps fresh on its own (a short-TTL cache, a background thread), and `wake()` returns at
once after *starting* a scale-up.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Literal

ReplicaState = Literal["launching", "loading", "warming", "ready", "draining"]


@dataclass(frozen=True)
class Replica:
    """A replica the gate may route to (or one that is on its way)."""

    id: str
    url: str  # base URL of the vLLM server, e.g. "http://10.0.3.7:8000" (no trailing /v1)
    cap: int  # in-flight requests this replica accepts (variant.target_concurrency by default)
    state: ReplicaState = "ready"


@dataclass(frozen=True)
class PoolSnapshot:
    """What the pool looks like now.

    ready: replicas that passed their warm-up and take traffic.
    starting: replicas launched but not ready yet (capacity is growing: the gate holds requests).
    stopped: the operator stopped the endpoint (the gate answers 503 "stopped", never wakes it).
    """

    ready: tuple[Replica, ...] = ()
    starting: int = 0
    stopped: bool = False
    detail: dict[str, str] = field(default_factory=dict)

    @property
    def growing(self) -> bool:
        return self.starting > 0


class ReplicaPool(abc.ABC):
    """Replica pool contract (DESIGN.md): ready(), wake(), report_demand(in_flight)."""

    kind: str = "abstract"

    @abc.abstractmethod
    def snapshot(self) -> PoolSnapshot:
        """Current replicas; cheap (no network round trip on the request path)."""

    def ready(self) -> tuple[Replica, ...]:
        return self.snapshot().ready

    @abc.abstractmethod
    def wake(self) -> None:
        """Start scaling up from zero. Idempotent: many concurrent callers cause one scale-up."""

    @abc.abstractmethod
    def report_demand(self, in_flight: int) -> None:
        """Tell the pool the endpoint-wide in-flight count; it scales by ceil(in_flight / target)."""

    def report_waiting(self, waiting: int) -> None:  # noqa: B027 - optional hook, only aws publishes it
        """Tell the pool how many requests this gate process holds waiting for capacity (re-reported
        while they wait). The aws pool publishes it, so Flex's idle rule sees a cold start's demand."""

    def close(self) -> None:  # noqa: B027 - optional hook, most pools hold nothing
        """Release background threads and connections. Does not stop replicas."""

"""The scaling rules as pure functions: no clock, no network; the controller feeds them numbers.

    scale out:  needed = ceil(in_flight / target_per_replica), clamped to [min, max], applied at once
    to zero:    Flex only, once a whole idle_timeout window (observed, not assumed) saw no request.
                Active never goes below min_replicas >= 1: nothing here lowers it. Partial
                scale-in is the Scaling component's target-tracking policy (same formula).
"""

from __future__ import annotations

from dataclasses import dataclass

from warmstart.spec import replicas_needed


@dataclass(frozen=True)
class Limits:
    min_replicas: int
    max_replicas: int
    target_per_replica: int
    idle_timeout_s: float

    def __post_init__(self) -> None:
        if self.min_replicas < 0 or self.max_replicas < max(self.min_replicas, 1):
            raise ValueError(
                f"min_replicas={self.min_replicas}, max_replicas={self.max_replicas}: need 0 <= min <= max, max >= 1"
            )
        if self.target_per_replica < 1:
            raise ValueError(f"target_per_replica={self.target_per_replica} must be >= 1")
        if self.idle_timeout_s <= 0:
            raise ValueError(f"idle_timeout_s={self.idle_timeout_s} must be > 0")

    @property
    def flex(self) -> bool:
        return self.min_replicas == 0


@dataclass(frozen=True)
class Decision:
    desired: int
    reason: str


def wake_target(current_desired: int, limits: Limits) -> Decision | None:
    """A request arrived: from zero, start one replica (or the Active floor); otherwise nothing."""
    if current_desired >= 1:
        return None
    target = max(1, limits.min_replicas)
    return Decision(min(target, limits.max_replicas), "wake: a request arrived with no replica")


def scale_out_target(in_flight: int, current_desired: int, limits: Limits) -> Decision | None:
    needed = replicas_needed(in_flight, limits.target_per_replica, limits.min_replicas, limits.max_replicas)
    if needed <= current_desired:
        return None
    return Decision(
        needed, f"scale out: {in_flight} in flight / {limits.target_per_replica} per replica -> {needed}"
    )


def idle_target(
    current_desired: int, peak_in_flight: int, observed_for_s: float, limits: Limits
) -> Decision | None:
    """Flex only: zero replicas once a whole idle_timeout window saw no request at all.

    Partial scale-in (N -> M > 0) and Active endpoints are left to the target-tracking policy of
    the Scaling component (same formula, CloudWatch's conservative scale-in): one controller per
    direction, so the two never fight.
    """
    if not limits.flex or current_desired == 0 or peak_in_flight > 0:
        return None
    if observed_for_s < limits.idle_timeout_s:
        return None  # not enough history: a fresh gate must not scale in on an empty record
    return Decision(0, f"idle: no request for {limits.idle_timeout_s:g}s (flex scales to zero)")

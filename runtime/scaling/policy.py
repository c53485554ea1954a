"""The scaling rules as pure functions: no clock, no network; the controller feeds them numbers.

    scale out:  needed = ceil(in_flight / target_per_replica), clamped to [min, max], applied at once
    scale in:   the same rule over the *peak* in-flight of the last idle_timeout seconds, applied
                only after that whole window has been observed. For Flex (min 0) a window with no
                request at all gives 0: scale to zero. Active is clamped at min_replicas >= 1.
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


def scale_in_target(
    current_desired: int, peak_in_flight: int, observed_for_s: float, limits: Limits
) -> Decision | None:
    if observed_for_s < limits.idle_timeout_s:
        return None  # not enough history: a fresh gate must not scale in on an empty record
    needed = replicas_needed(peak_in_flight, limits.target_per_replica, limits.min_replicas, limits.max_replicas)
    if needed >= current_desired:
        return None
    window = f"{limits.idle_timeout_s:g}s"
    if needed == 0:
        return Decision(0, f"idle: no request for {window} (flex scales to zero)")
    return Decision(needed, f"scale in: peak {peak_in_flight} in flight over {window} -> {needed}")

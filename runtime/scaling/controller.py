"""The scaling controller: wake from zero, scale out on demand, scale in (to zero for Flex) when idle.

It runs inside every gate (the AWS pool drives it) and the gates coordinate through Redis:

- `wake()` and `scale_out()` are called on the request path's behalf. A cached desired capacity
  answers most calls with no AWS call at all; otherwise one caller at a time (the "scale" lock)
  re-reads the group and sets the new desired capacity only if it is still below the target.
  So 20 gates waking at once make one SetDesiredCapacity call.
- `tick()` runs on a timer. The "tick" lock, held for the whole interval and never released
  early, makes one gate per interval the scaler; it sets a Flex endpoint's desired capacity to 0
  once the last idle_timeout seconds saw no request. (Partial scale-in is the Scaling
  component's target-tracking policy; its idle alarm is the backstop when no gate is running.)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from runtime.scaling import asg as asgops
from runtime.scaling.coordination import Coordinator, bucket_of
from runtime.scaling.policy import Decision, Limits, idle_target, scale_out_target, wake_target

log = logging.getLogger("warmstart.scaling")

SCALE_LOCK_TTL_S = 30.0


class ScalingController:
    def __init__(
        self,
        asg_client: Any,
        asg_name: str,
        limits: Limits,
        coordinator: Coordinator,
        *,
        wall: Callable[[], float] = time.time,
        tick_interval_s: float = 15.0,
    ) -> None:
        self.asg = asg_client
        self.asg_name = asg_name
        self.limits = limits
        self.coord = coordinator
        self.wall = wall
        self.tick_interval_s = tick_interval_s
        self._recorded: tuple[int, int] = (-1, -1)  # (bucket, in_flight) last sent: spare the store

    # -- demand ---------------------------------------------------------------------------------

    def observe(self, in_flight: int) -> None:
        """Record endpoint-wide in-flight now; repeats of a lower or equal value in a bucket are free."""
        now = self.wall()
        b = bucket_of(now)
        last_b, last_n = self._recorded
        if b == last_b and in_flight <= last_n:
            return
        self.coord.record_demand(now, in_flight)
        self._recorded = (b, in_flight)

    # -- raising capacity -----------------------------------------------------------------------

    def _raise(self, target: Callable[[int], Decision | None]) -> Decision | None:
        lease = self.coord.try_lock("scale", SCALE_LOCK_TTL_S)
        if lease is None:
            return None  # another caller (this gate or another) is changing capacity right now
        try:
            group = asgops.describe_group(self.asg, self.asg_name)
            if group is None or asgops.group_tags(group).get(asgops.STOPPED_TAG) == "true":
                return None
            decision = target(int(group["DesiredCapacity"]))
            if decision is not None:
                decision = Decision(min(decision.desired, int(group["MaxSize"])), decision.reason)
                asgops.set_desired(self.asg, self.asg_name, decision.desired)
                log.info("%s: desired capacity %s -> %s (%s)", self.asg_name,
                         group["DesiredCapacity"], decision.desired, decision.reason)
            return decision
        finally:
            lease.release()

    def wake(self, cached_desired: int | None = None) -> Decision | None:
        self.observe(1)  # a waiting request is demand: the idle window restarts now
        if cached_desired is not None and cached_desired >= 1:
            return None
        return self._raise(lambda d: wake_target(d, self.limits))

    def scale_out(self, in_flight: int, cached_desired: int | None = None) -> Decision | None:
        self.observe(in_flight)
        if cached_desired is not None and scale_out_target(in_flight, cached_desired, self.limits) is None:
            return None
        return self._raise(lambda d: scale_out_target(in_flight, d, self.limits))

    # -- to zero ----------------------------------------------------------------------

    def tick(self) -> Decision | None:
        if not self.limits.flex:
            return None  # Active: min_replicas is the floor, nothing here lowers capacity
        if self.coord.try_lock("tick", self.tick_interval_s * 0.9) is None:
            return None  # another gate is the scaler for this interval
        lease = self.coord.try_lock("scale", SCALE_LOCK_TTL_S)
        if lease is None:
            return None
        try:
            group = asgops.describe_group(self.asg, self.asg_name)
            if group is None or asgops.group_tags(group).get(asgops.STOPPED_TAG) == "true":
                return None
            now = self.wall()
            window_start = now - self.limits.idle_timeout_s
            # Read the peak under the scale lock, right before acting: a request that arrived a
            # moment ago is in it, so we do not scale to zero under its feet.
            peak = self.coord.peak_since(window_start, now)
            observed = now - self.coord.observing_since(now)
            decision = idle_target(int(group["DesiredCapacity"]), peak, observed, self.limits)
            if decision is not None:
                asgops.set_desired(self.asg, self.asg_name, decision.desired)
                log.info("%s: desired capacity %s -> %s (%s)", self.asg_name,
                         group["DesiredCapacity"], decision.desired, decision.reason)
            return decision
        finally:
            lease.release()

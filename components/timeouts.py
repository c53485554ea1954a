"""One rule for the edge's timeouts, on both substrates (EC2 edge and EKS Ingress).

A request's life at the edge, longest case: the gate holds it for capacity (hold_timeout_s,
silent for a non-streamed request), then waits on the replica (request_timeout_s, silent until
the answer). Everything else follows from that bound:

- ALB idle timeout: covers the longest silent wait, plus a margin, or the ALB answers 504 to a
  request the gate is still serving. ELB attribute `idle_timeout.timeout_seconds`: 1-4000.
- gate keep-alive: ABOVE the ALB idle timeout. AWS: "we recommend that you configure the idle
  timeout of your application to be larger than the idle timeout configured for the load
  balancer" — otherwise the gate closes a connection the ALB is about to reuse (sporadic 502s).
- deregistration delay: a leaving gate keeps its running requests this long before the ALB cuts
  them. Target group attribute `deregistration_delay.timeout_seconds`: 0-3600.
- gunicorn's graceful timeout: on a stop or reload, running requests get as long to finish as
  the ALB would give them.
- the stop bound of whatever stops the gate (docker stop --time / systemd TimeoutStopSec on EC2,
  terminationGracePeriodSeconds on Kubernetes): above the graceful timeout, so gunicorn ends the
  streams itself instead of being killed mid-answer.
"""

from __future__ import annotations

from dataclasses import dataclass

from warmstart.errors import ConfigError

ALB_IDLE_MIN_S = 60
ALB_IDLE_MAX_S = 4000
DEREGISTRATION_MAX_S = 3600
# Seconds between the gate's last byte and the ALB's idle clock running out: response headers,
# the proxy's own connect (5 s) and scheduling slack.
IDLE_MARGIN_S = 30
# The gate's keep-alive exceeds the ALB's idle timeout by this much.
KEEPALIVE_MARGIN_S = 15
# gunicorn needs a moment after its graceful timeout to reap workers and exit.
STOP_MARGIN_S = 15


@dataclass(frozen=True)
class EdgeTimeouts:
    alb_idle_s: int
    gate_keepalive_s: int
    deregistration_delay_s: int
    graceful_timeout_s: int
    stop_timeout_s: int

    def gate_env(self) -> dict[str, str]:
        """The gate's gunicorn settings (runtime/gate/gunicorn_conf.py reads WS_GATE_*)."""
        return {"WS_GATE_KEEPALIVE": str(self.gate_keepalive_s),
                "WS_GATE_GRACEFUL_TIMEOUT": str(self.graceful_timeout_s)}


def edge_timeouts(*, request_timeout_s: float, hold_timeout_s: float) -> EdgeTimeouts:
    """The edge's timeouts for an endpoint's request and hold bounds."""
    if request_timeout_s <= 0 or hold_timeout_s < 0:
        raise ConfigError(f"request_timeout_s={request_timeout_s}, hold_timeout_s={hold_timeout_s}: "
                         "the request timeout must be > 0 and the hold timeout >= 0")
    longest = int(request_timeout_s + hold_timeout_s + 0.999)
    idle = longest + IDLE_MARGIN_S
    if idle > ALB_IDLE_MAX_S:
        raise ConfigError(
            f"request_timeout_s + hold_timeout_s = {longest} s needs an ALB idle timeout of {idle} s, above "
            f"the ALB's maximum {ALB_IDLE_MAX_S} s; lower request_timeout_s (streams are the answer for long outputs)"
        )
    idle = max(ALB_IDLE_MIN_S, idle)
    drain = min(DEREGISTRATION_MAX_S, longest)
    graceful = max(drain, longest)
    return EdgeTimeouts(
        alb_idle_s=idle,
        gate_keepalive_s=idle + KEEPALIVE_MARGIN_S,
        deregistration_delay_s=drain,
        graceful_timeout_s=graceful,
        stop_timeout_s=graceful + STOP_MARGIN_S,
    )

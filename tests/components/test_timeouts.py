"""One timeout rule for the edge, on the EC2 edge and on the EKS Ingress (components/timeouts.py)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from components.timeouts import ALB_IDLE_MAX_S, DEREGISTRATION_MAX_S, edge_timeouts
from tests.support.k8s_manifests import manifests
from warmstart.errors import ConfigError
from warmstart.spec import load_variant, parse_endpoint


@given(request=st.integers(min_value=10, max_value=3600), hold=st.integers(min_value=0, max_value=900))
def test_the_rule_holds_for_every_endpoint_it_accepts(request: int, hold: int) -> None:
    """ELB idle_timeout.timeout_seconds (1-4000) covers the longest silent wait (hold + request);
    the target's keep-alive is larger (AWS: "configure the idle timeout of your application to be
    larger than the idle timeout configured for the load balancer"); deregistration_delay
    .timeout_seconds (0-3600) is the longest request; the graceful timeout lets it finish and the
    stop bound is above that."""
    try:
        t = edge_timeouts(request_timeout_s=request, hold_timeout_s=hold)
    except ConfigError as e:
        assert request + hold + 30 > ALB_IDLE_MAX_S
        assert "lower request_timeout_s" in str(e) and "\n" not in str(e)
        return
    assert request + hold < t.alb_idle_s <= ALB_IDLE_MAX_S
    assert t.gate_keepalive_s > t.alb_idle_s
    assert t.deregistration_delay_s == min(request + hold, DEREGISTRATION_MAX_S)
    assert t.graceful_timeout_s >= t.deregistration_delay_s
    assert t.stop_timeout_s > t.graceful_timeout_s
    assert t.gate_env() == {"WS_GATE_KEEPALIVE": str(t.gate_keepalive_s),
                            "WS_GATE_GRACEFUL_TIMEOUT": str(t.graceful_timeout_s)}


def test_the_gunicorn_default_would_have_cut_connections() -> None:
    """The defaults (request 600 s, hold 120 s) need a 750 s ALB idle timeout; gunicorn's built-in
    keep-alive of 310 s is below it, the 502 race this rule removes."""
    t = edge_timeouts(request_timeout_s=600, hold_timeout_s=120)
    assert t.alb_idle_s == 750 and t.gate_keepalive_s == 765 and t.deregistration_delay_s == 720
    from runtime.gate import gunicorn_conf

    assert gunicorn_conf.keepalive < t.alb_idle_s  # why the stacks pass WS_GATE_KEEPALIVE


def test_eks_ingress_and_gate_pod_follow_the_same_rule(pulumi_record: Any) -> None:
    """The Load Balancer Controller's attributes (idle_timeout.timeout_seconds,
    deregistration_delay.timeout_seconds) and the gate pod (its gunicorn env and
    terminationGracePeriodSeconds, which includes the preStop sleep) come from edge_timeouts."""
    from components.eks_workloads import GATE, GATE_PRESTOP_S, EksWorkloads, EksWorkloadsArgs

    ep = parse_endpoint({"name": "chat", "variant": "llama31-8b-fp8-l4", "allow_http": True,
                         "request_timeout_s": 900, "hold_timeout_s": 60})
    t = edge_timeouts(request_timeout_s=900, hold_timeout_s=60)

    def program() -> None:
        EksWorkloads("chat", EksWorkloadsArgs(
            endpoint=ep, variant=load_variant(ep.variant), image_uri="r/i@sha256:" + "0" * 64,
            store_url="rediss://cache.example:6379/0", keys_table="t", vpc_cidr="10.40.0.0/16"))

    docs = manifests(pulumi_record(program))
    (ing,) = [d for d in docs if d["kind"] == "Ingress"]
    a = ing["metadata"]["annotations"]
    assert f"idle_timeout.timeout_seconds={t.alb_idle_s}" in a["alb.ingress.kubernetes.io/load-balancer-attributes"]
    assert (f"deregistration_delay.timeout_seconds={t.deregistration_delay_s}"
            in a["alb.ingress.kubernetes.io/target-group-attributes"])
    assert a["alb.ingress.kubernetes.io/healthcheck-path"] == "/livez"
    (gate,) = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == GATE]
    pod = gate["spec"]["template"]["spec"]
    (c,) = [c for c in pod["containers"] if c["name"] == GATE]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert int(env["WS_GATE_KEEPALIVE"]) > t.alb_idle_s
    assert int(env["WS_GATE_GRACEFUL_TIMEOUT"]) == t.graceful_timeout_s
    assert c["lifecycle"]["preStop"]["sleep"]["seconds"] == GATE_PRESTOP_S
    assert pod["terminationGracePeriodSeconds"] == GATE_PRESTOP_S + t.stop_timeout_s


def test_a_request_timeout_beyond_the_alb_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError, match=r"request_timeout_s \+ hold_timeout_s = 4500 s needs an ALB idle timeout "
                                          r"of 4530 s, above the ALB's maximum 4000 s; lower request_timeout_s"):
        edge_timeouts(request_timeout_s=3600, hold_timeout_s=900)

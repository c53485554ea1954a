"""Scaling: needed = ceil(in_flight / target_per_replica), and Flex's idle rule.

- Scale out/in: a target-tracking policy on InFlightPerReplica (published by the gate) with
  target = the variant's target concurrency. Target tracking sets capacity to
  ceil(current * metric / target) = ceil(in_flight / target), clamped by the ASG to [min, max]:
  the scale-out rule of DESIGN.md.
- From zero: with no replica there is no per-replica metric; the gate wakes the pool itself
  (SetDesiredCapacity through the aws pool) when a request arrives.
- Flex idle: idle means no request arrived, none is still running AND none is waiting for capacity. A stream outlives the
  minute it arrived in, so Requests alone would call a 10-minute stream idle after 5 and scale
  its replica away mid-answer. The alarm is metric math over the gate's Requests (Sum) and
  InFlight (Maximum, the minute's peak): FILL(Requests, 0) + FILL(InFlight, 0) below 1 for
  ceil(idle_timeout / 60) consecutive minutes runs a step policy that sets the capacity to 0.
  FILL zero-fills a gap in one series, so a missing Requests datapoint cannot hide a running
  stream (plain m1 + m2 is missing where either is). Missing data as a whole counts as idle:
  the gate publishes both every minute, also at zero replicas, so no data means no gate is
  running and nobody can be calling.
  A cold start's callers are neither: the gate holds them (no lease, so not InFlight; not
  answered, so not Requests) for the minutes a replica takes to boot. While the alarm stays in
  ALARM, Auto Scaling re-runs its policy, and would set the capacity back to 0 right after the
  gate's wake. So the math also adds the gate's Waiting (Maximum: requests held for capacity),
  which the gate publishes as soon as it wakes the group and every minute after.
- Active: no idle rule; the ASG's min_size (>= 1) is the floor.
- Stopped: alarm actions are disabled; the node group's max size is 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import pulumi
import pulumi_aws as aws

from components.base import Tags, child
from warmstart import metrics

# The gate's peak in-flight requests of the minute (warmstart.metrics.PUBLISHED).
IN_FLIGHT = metrics.IN_FLIGHT
# FILL: a gap in one series must not hide another (m1 + m2 is missing where either is).
IDLE_EXPRESSION = "FILL(requests, 0) + FILL(in_flight, 0) + FILL(waiting, 0)"


def idle_periods(idle_timeout_s: int) -> int:
    """Whole minutes without requests that make an endpoint idle (CloudWatch periods are 60 s)."""
    return max(1, math.ceil(idle_timeout_s / 60))


@dataclass
class ScalingArgs:
    endpoint: str
    asg_name: pulumi.Input[str]
    mode: Literal["flex", "active"]
    target_per_replica: int
    idle_timeout_s: int
    stopped: bool
    tags: Tags
    instance_warmup_s: int = 300


class Scaling(pulumi.ComponentResource):
    def __init__(self, name: str, args: ScalingArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("warmstart:scaling:Scaling", name, None, opts)
        dims = [aws.autoscaling.PolicyTargetTrackingConfigurationCustomizedMetricSpecificationMetricDimensionArgs(
            name=metrics.DIMENSION, value=args.endpoint)]
        self.target_tracking = aws.autoscaling.Policy(
            f"{name}-inflight",
            autoscaling_group_name=args.asg_name,
            policy_type="TargetTrackingScaling",
            estimated_instance_warmup=args.instance_warmup_s,
            enabled=not args.stopped,
            target_tracking_configuration=aws.autoscaling.PolicyTargetTrackingConfigurationArgs(
                target_value=float(args.target_per_replica),
                customized_metric_specification=(
                    aws.autoscaling.PolicyTargetTrackingConfigurationCustomizedMetricSpecificationArgs(
                        namespace=metrics.NAMESPACE, metric_name=metrics.INFLIGHT_PER_REPLICA,
                        metric_dimensions=dims, statistic="Average", unit="Count",
                    )
                ),
            ),
            opts=child(self),
        )
        self.idle_alarm: aws.cloudwatch.MetricAlarm | None = None
        if args.mode == "flex":
            to_zero = aws.autoscaling.Policy(
                f"{name}-idle-to-zero",
                autoscaling_group_name=args.asg_name,
                policy_type="StepScaling",
                adjustment_type="ExactCapacity",
                enabled=not args.stopped,
                step_adjustments=[aws.autoscaling.PolicyStepAdjustmentArgs(
                    scaling_adjustment=0, metric_interval_upper_bound="0",
                )],
                opts=child(self),
            )
            periods = idle_periods(args.idle_timeout_s)
            self.idle_alarm = aws.cloudwatch.MetricAlarm(
                f"{name}-idle",
                alarm_description=(f"Flex: no requests, none in flight and none waiting for capacity "
                                   f"for {periods} minute(s) -> scale replicas to 0"),
                metric_queries=[
                    _gate_metric("requests", metrics.REQUESTS, "Sum", args.endpoint),
                    _gate_metric("in_flight", IN_FLIGHT, "Maximum", args.endpoint),
                    _gate_metric("waiting", metrics.WAITING, "Maximum", args.endpoint),
                    aws.cloudwatch.MetricAlarmMetricQueryArgs(
                        id="idle", expression=IDLE_EXPRESSION, label="requests + in flight + waiting",
                        return_data=True),
                ],
                evaluation_periods=periods, datapoints_to_alarm=periods, threshold=1,
                comparison_operator="LessThanThreshold", treat_missing_data="breaching",
                actions_enabled=not args.stopped, alarm_actions=[to_zero.arn],
                tags=args.tags, opts=child(self),
            )
        self.register_outputs({})


def _gate_metric(query_id: str, metric_name: str, stat: str, endpoint: str) -> aws.cloudwatch.MetricAlarmMetricQueryArgs:
    return aws.cloudwatch.MetricAlarmMetricQueryArgs(
        id=query_id, return_data=False,
        metric=aws.cloudwatch.MetricAlarmMetricQueryMetricArgs(
            namespace=metrics.NAMESPACE, metric_name=metric_name, stat=stat, period=60, unit="Count",
            dimensions={metrics.DIMENSION: endpoint},
        ),
    )

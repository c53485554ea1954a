"""Monitoring: log groups, request metrics from the gate's logs, a dashboard and alarms.

Everything reads the metric names of warmstart/metrics.py (namespace Warmstart, dimension
Endpoint) and the ASGs' own group metrics, so it can be declared before the edge and the node
group exist: their instances find the log groups already there when they boot.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws

from components.base import Tags, child, named
from warmstart import metrics, naming

# On-demand list prices (USD/hour, us-east-1) for the dashboard's cost estimate only; nothing is
# billed from these. Unknown types show replicas without a cost line.
HOURLY_USD: dict[str, float] = {
    "g5.xlarge": 1.006, "g5.2xlarge": 1.212, "g5.12xlarge": 5.672, "g5.48xlarge": 16.288,
    "g6.xlarge": 0.805, "g6.2xlarge": 0.978, "g6.12xlarge": 4.602,
    "g6e.xlarge": 1.861, "g6e.2xlarge": 2.242, "g6e.12xlarge": 10.493,
    "p4d.24xlarge": 32.773, "p5.48xlarge": 98.32,
}


# 1 in a minute when requests wait for capacity and no replica was ready at any point of it. A
# minute with waiting requests but no ReadyReplicas datapoint counts too (FILL: no report, none ready).
NO_CAPACITY_EXPRESSION = "IF(FILL(waiting, 0) > 0 AND FILL(ready, 0) == 0, 1, 0)"


def alarm_key_policy(account: str) -> str:
    """The alarm topic's KMS key policy: the account administers it; CloudWatch may encrypt
    (kms:GenerateDataKey*) and decrypt for SNS. AWS: the key policy must "allow CloudWatch to use
    the key" with these two actions for alarm notifications to an encrypted topic."""
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Sid": "AccountAdministers", "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{account}:root"},
         "Action": "kms:*", "Resource": "*"},
        {"Sid": "CloudWatchAlarmsPublish", "Effect": "Allow", "Principal": {"Service": "cloudwatch.amazonaws.com"},
         "Action": ["kms:Decrypt", "kms:GenerateDataKey*"], "Resource": "*",
         "Condition": {"StringEquals": {"aws:SourceAccount": account}}},
    ]}, sort_keys=True)


@dataclass
class MonitoringArgs:
    environment: str
    endpoint: str
    region: str
    instance_type: str
    gate_instances: int
    log_retention_days: int
    tags: Tags
    alarm_email: str | None = None
    latency_p99_alarm_ms: int = 30_000


def _metric(name: str, endpoint: str, stat: str, label: str | None = None, **extra: Any) -> list[Any]:
    opts: dict[str, Any] = {"stat": stat, **extra}
    if label:
        opts["label"] = label
    return [metrics.NAMESPACE, name, metrics.DIMENSION, endpoint, opts]


def dashboard_body(a: MonitoringArgs) -> str:
    ep, region = a.endpoint, a.region
    replica_asg = naming.replica_asg_name(a.environment, a.endpoint)
    price = HOURLY_USD.get(a.instance_type)

    def widget(title: str, series: list[list[Any]], x: int, y: int, **props: Any) -> dict[str, Any]:
        return {"type": "metric", "x": x, "y": y, "width": 12, "height": 6,
                "properties": {"title": title, "region": region, "view": "timeSeries", "period": 60,
                               "metrics": series, **props}}

    replicas = ["AWS/AutoScaling", "GroupInServiceInstances", "AutoScalingGroupName", replica_asg,
                {"stat": "Maximum", "id": "inservice", "label": "replicas in service"}]
    cost_series: list[list[Any]] = [replicas]
    if price is not None:
        cost_series = [
            [*replicas[:4], {**replicas[4], "visible": False}],  # type: ignore[dict-item]
            [{"expression": f"inservice * {price}", "label": f"est. USD/hour ({a.instance_type})", "id": "cost"}],
        ]
    widgets = [
        widget("Latency (ms)", [_metric("Latency", ep, "p50", "p50"), _metric("Latency", ep, "p99", "p99")], 0, 0),
        widget("Time to first token (ms)", [_metric("TimeToFirstToken", ep, "p50", "p50"),
                                            _metric("TimeToFirstToken", ep, "p99", "p99")], 12, 0),
        widget("In flight", [_metric("InFlight", ep, "Maximum", "in flight"),
                             _metric("InFlightPerReplica", ep, "Average", "per replica"),
                             _metric("Waiting", ep, "Maximum", "waiting for capacity")], 0, 6),
        widget("Queue wait (ms)", [_metric("QueueWait", ep, "p50", "p50"), _metric("QueueWait", ep, "p99", "p99")],
               12, 6),
        widget("Replicas", [_metric("ReadyReplicas", ep, "Maximum", "ready (gate)"), replicas,
                            ["AWS/AutoScaling", "GroupDesiredCapacity", "AutoScalingGroupName", replica_asg,
                             {"stat": "Maximum", "label": "desired"}]], 0, 12),
        widget("Requests and rejections", [_metric("Requests", ep, "Sum", "requests"),
                                           _metric("Rejected429", ep, "Sum", "429"),
                                           _metric("Rejected503", ep, "Sum", "503")], 12, 12),
        widget("Output tokens / s", [_metric("OutputTokens", ep, "Sum", id="tok", visible=False),
                                     [{"expression": "tok / PERIOD(tok)", "label": "tokens/s", "id": "tps"}]],
               0, 18),
        widget("Estimated cost per hour", cost_series, 12, 18),
    ]
    return json.dumps({"widgets": widgets}, sort_keys=True)


class Monitoring(pulumi.ComponentResource):
    replica_log_group: aws.cloudwatch.LogGroup
    gate_log_group: aws.cloudwatch.LogGroup
    dashboard_name: pulumi.Output[str]
    dashboard_url: pulumi.Output[str]

    def __init__(self, name: str, args: MonitoringArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("warmstart:monitoring:Monitoring", name, None, opts)
        env, ep, t = args.environment, args.endpoint, args.tags
        self.replica_log_group = aws.cloudwatch.LogGroup(
            f"{name}-replicas", name=naming.replica_log_group(env, ep), retention_in_days=args.log_retention_days,
            tags=t, opts=child(self),
        )
        self.gate_log_group = aws.cloudwatch.LogGroup(
            f"{name}-gate", name=naming.gate_log_group(env, ep), retention_in_days=args.log_retention_days,
            tags=t, opts=child(self),
        )
        for metric, (unit, fld) in metrics.FROM_LOGS.items():
            aws.cloudwatch.LogMetricFilter(
                f"{name}-{metric.lower()}",
                log_group_name=self.gate_log_group.name,
                pattern=(f"{{ $.{metrics.ACCESS_LOG_ID_FIELD} = * && $.{metrics.ACCESS_LOG_ENDPOINT_FIELD} = * "
                         f"&& $.{fld} = * }}"),
                metric_transformation=aws.cloudwatch.LogMetricFilterMetricTransformationArgs(
                    name=metric, namespace=metrics.NAMESPACE, value=f"$.{fld}", unit=unit,
                    dimensions={metrics.DIMENSION: f"$.{metrics.ACCESS_LOG_ENDPOINT_FIELD}"},
                ),
                opts=child(self),
            )

        actions: list[pulumi.Input[str]] = []
        if args.alarm_email:
            # A customer-managed key: CloudWatch cannot use the AWS-managed alias/aws/sns (its key
            # policy cannot be edited), so alarms would never be delivered to an encrypted topic.
            account = aws.get_caller_identity_output(opts=pulumi.InvokeOutputOptions(parent=self)).account_id
            key = aws.kms.Key(
                f"{name}-alarms-key", description=f"warmstart alarm topic {env}/{ep}",
                enable_key_rotation=True, deletion_window_in_days=30,
                policy=account.apply(alarm_key_policy), tags=t, opts=child(self),
            )
            topic = aws.sns.Topic(f"{name}-alarms", kms_master_key_id=key.arn, tags=named(t, f"{name}-alarms"),
                                  opts=child(self))
            aws.sns.TopicSubscription(f"{name}-alarms-email", topic=topic.arn, protocol="email",
                                      endpoint=args.alarm_email, opts=child(self))
            actions.append(topic.arn)

        def alarm(suffix: str, description: str, **kw: Any) -> None:
            aws.cloudwatch.MetricAlarm(
                f"{name}-{suffix}", alarm_description=description, alarm_actions=actions, ok_actions=actions,
                tags=t, opts=child(self), **kw,
            )

        dims = {metrics.DIMENSION: ep}
        alarm("rejected-503", "requests refused with 503: capacity short beyond the hold bound, or stopped",
              namespace=metrics.NAMESPACE, metric_name="Rejected503", dimensions=dims, statistic="Sum",
              period=300, evaluation_periods=1, threshold=10, comparison_operator="GreaterThanThreshold",
              treat_missing_data="notBreaching")
        alarm("latency-p99", f"p99 latency above {args.latency_p99_alarm_ms} ms for 15 minutes",
              namespace=metrics.NAMESPACE, metric_name="Latency", dimensions=dims, extended_statistic="p99",
              period=300, evaluation_periods=3, threshold=args.latency_p99_alarm_ms,
              comparison_operator="GreaterThanThreshold", treat_missing_data="notBreaching")
        # Waiting, not InFlight: a request held for capacity holds no lease, so InFlight is 0
        # exactly when no replica is ready.
        alarm("no-capacity", "requests waiting but no replica ready for 15 minutes (GPU capacity, boot failures)",
              evaluation_periods=15, threshold=0, comparison_operator="GreaterThanThreshold",
              treat_missing_data="notBreaching", metric_queries=[
                  aws.cloudwatch.MetricAlarmMetricQueryArgs(
                      id="stuck", expression=NO_CAPACITY_EXPRESSION, return_data=True,
                      label="waiting with no ready replica"),
                  aws.cloudwatch.MetricAlarmMetricQueryArgs(id="waiting",
                                                            metric=_query(metrics.WAITING, ep, "Maximum")),
                  aws.cloudwatch.MetricAlarmMetricQueryArgs(id="ready", metric=_query("ReadyReplicas", ep, "Maximum")),
              ])
        alarm("gates-down", f"fewer than {args.gate_instances} gate instances in service",
              namespace="AWS/AutoScaling", metric_name="GroupInServiceInstances",
              dimensions={"AutoScalingGroupName": naming.gate_asg_name(env, ep)}, statistic="Minimum",
              period=60, evaluation_periods=5, threshold=args.gate_instances, comparison_operator="LessThanThreshold",
              treat_missing_data="breaching")

        dash_name = naming.prefix(env, ep)
        dashboard = aws.cloudwatch.Dashboard(
            f"{name}-dashboard", dashboard_name=dash_name, dashboard_body=dashboard_body(args), opts=child(self),
        )
        self.dashboard_name = dashboard.dashboard_name
        self.dashboard_url = dashboard.dashboard_name.apply(
            lambda d: f"https://{args.region}.console.aws.amazon.com/cloudwatch/home?region={args.region}"
                      f"#dashboards:name={d}"
        )
        self.register_outputs({"dashboard_url": self.dashboard_url})


def _query(metric: str, endpoint: str, stat: str) -> aws.cloudwatch.MetricAlarmMetricQueryMetricArgs:
    return aws.cloudwatch.MetricAlarmMetricQueryMetricArgs(
        namespace=metrics.NAMESPACE, metric_name=metric, dimensions={metrics.DIMENSION: endpoint},
        stat=stat, period=60,
    )


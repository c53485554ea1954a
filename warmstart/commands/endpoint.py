"""`warmstart endpoint status|logs|stop|start|change-gpu|metrics`.

Every command takes either `--stack ENV [--endpoint NAME]` (names resolved from the stack file
and warmstart.naming; stop/start/change-gpu also write the stack file so the next `pulumi up`
agrees) or `--asg NAME [--region R]` (break-glass: the group alone, the standard AWS environment,
no stack file and no Pulumi).
"""

from __future__ import annotations

import importlib
import json
import re
from dataclasses import dataclass

import click

from warmstart import naming
from warmstart.errors import ConfigError, OperationError
from warmstart.ops import asg as ops
from warmstart.ops.stackconfig import StackFile
from warmstart.spec import EndpointConfig


@dataclass
class Resolved:
    target: ops.Target
    stack: StackFile | None = None
    endpoint: EndpointConfig | None = None

    def write(self, what: str, **fields: object) -> None:
        """Record the change in the stack file (validated first); no-op for --asg."""
        if self.stack is None or self.endpoint is None:
            return
        self.stack.set_fields(self.endpoint.name, **fields)
        self.stack.save()
        click.echo(f"stack file {self.stack.path}: {self.endpoint.name}: {what} (the next pulumi up agrees)")


def resolve(stack: str | None, endpoint: str | None, asg: str | None, region: str | None) -> Resolved:
    if (stack is None) == (asg is None):
        raise ConfigError("name the endpoint with --stack ENV [--endpoint NAME], or a group with --asg NAME")
    if asg is not None:
        if endpoint is not None:
            raise ConfigError("--endpoint goes with --stack; with --asg NAME the group is the endpoint")
        return Resolved(target=ops.target_from_asg(asg, region))
    assert stack is not None
    sf = StackFile.load(stack)
    ep = sf.endpoint(endpoint)
    env = sf.environment
    target = ops.Target(
        asg_name=naming.replica_asg_name(env, ep.name), region=region or sf.region,
        environment=env, endpoint=ep.name, variant=ep.variant,
        floor=ep.min_replicas, max_size=ep.max_replicas, warm_pool_size=ep.warm_pool_size,
        stopped=ep.stopped,
    )
    return Resolved(target=target, stack=sf, endpoint=ep)


def _where(f: click.decorators.FC) -> click.decorators.FC:
    for opt in reversed([
        click.option("--stack", "stack", metavar="ENV", help="stack (stacks/Pulumi.ENV.yaml)"),
        click.option("--endpoint", "endpoint_name", metavar="NAME", help="endpoint in the stack (if several)"),
        click.option("--asg", metavar="NAME", help="break-glass: act on this replica ASG directly"),
        click.option("--region", metavar="R", help="AWS region (default: the stack's aws:region or AWS_REGION)"),
    ]):
        f = opt(f)
    return f


class EndpointGroup(click.Group):
    """Adds `metrics` lazily from the monitoring package, when that package is installed."""

    METRICS = ("warmstart.monitoring.cli", "metrics")

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), "metrics"})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name != "metrics":
            return super().get_command(ctx, cmd_name)
        module_name, attr = self.METRICS
        try:
            command = getattr(importlib.import_module(module_name), attr)
        except ModuleNotFoundError as e:
            if not (e.name and module_name.startswith(e.name)):
                raise
            return _not_installed
        assert isinstance(command, click.Command)
        return command


@click.command("metrics", context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
               help="Endpoint metrics (needs warmstart.monitoring, not installed).")
def _not_installed() -> None:
    raise OperationError("`endpoint metrics` is not installed in this build (warmstart.monitoring is missing)")


@click.group(cls=EndpointGroup)
def endpoint() -> None:
    """Day-two operations on a deployed endpoint."""


@endpoint.command()
@_where
@click.option("--json", "as_json", is_flag=True, help="print the status as JSON")
def status(stack: str | None, endpoint_name: str | None, asg: str | None, region: str | None,
           as_json: bool) -> None:
    """Endpoint state (provisioning, active, stopped, failed) and each replica's phase."""
    r = resolve(stack, endpoint_name, asg, region)
    st = ops.status(r.target)
    if as_json:
        click.echo(json.dumps(st.to_dict(), indent=2))
        return
    click.echo(f"{st.asg_name}: {st.state} ({st.why})")
    click.echo(f"  instance type {st.instance_type or '?'} · desired {st.desired} · min {st.min_size} · "
               f"max {st.max_size} · warm pool {st.warm_pool}")
    for note in st.notes:
        click.echo(f"  note: {note}")
    for rep in st.replicas:
        click.echo(f"  {rep.instance_id}  {rep.instance_type:<12} {rep.zone:<12} "
                   f"{rep.private_ip:<15} {rep.phase}")


_DURATION = re.compile(r"^(\d+)([smhd])$")


def _seconds(text: str) -> float:
    m = _DURATION.match(text.strip())
    if not m:
        raise ConfigError(f"--since {text!r} is not a duration; use e.g. 30s, 10m, 2h or 1d")
    return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


@endpoint.command()
@_where
@click.option("--follow", "-f", is_flag=True, help="keep streaming new lines (Ctrl-C stops)")
@click.option("--since", default="10m", show_default=True, help="start this far back (30s, 10m, 2h, 1d)")
@click.option("--log-group", metavar="NAME", help="override the replicas' log group")
def logs(stack: str | None, endpoint_name: str | None, asg: str | None, region: str | None,
         follow: bool, since: str, log_group: str | None) -> None:
    """The replicas' logs from CloudWatch (watch the model load with --follow)."""
    since_s = _seconds(since)
    r = resolve(stack, endpoint_name, asg, region)
    group = log_group or r.target.log_group
    if group is None:
        raise ConfigError(
            f"group {r.target.asg_name} has no warmstart:environment/endpoint tags; pass --log-group NAME"
        )
    try:
        for line in ops.log_events(group, region=r.target.region, since_s=since_s, follow=follow):
            click.echo(line)
    except KeyboardInterrupt:
        pass


@endpoint.command()
@_where
def stop(stack: str | None, endpoint_name: str | None, asg: str | None, region: str | None) -> None:
    """No replicas, no charges; the gate answers 503 "stopped" until `start`."""
    r = resolve(stack, endpoint_name, asg, region)
    click.echo(ops.stop(r.target))
    r.write("stopped: true", stopped=True)


@endpoint.command()
@_where
@click.option("--min", "min_size", type=int, metavar="N", help="with --asg: the floor to restore")
@click.option("--max", "max_size", type=int, metavar="N",
              help="with --asg: the ceiling (default: the size saved by stop)")
def start(stack: str | None, endpoint_name: str | None, asg: str | None, region: str | None,
          min_size: int | None, max_size: int | None) -> None:
    """Back to the configured floor (Flex: 0 until the next request; Active: min_replicas)."""
    r = resolve(stack, endpoint_name, asg, region)
    if (min_size is not None or max_size is not None) and r.stack is not None:
        raise ConfigError("--min/--max go with --asg; with --stack they are the endpoint's min/max_replicas")
    if asg is not None and min_size is None:
        raise ConfigError("with --asg, pass --min N (the floor: 0 for Flex, min_replicas for Active)")
    click.echo(ops.start(r.target, min_size, max_size))
    r.write("stopped: false", stopped=False)


@endpoint.command("change-gpu")
@_where
@click.option("--to", "--instance-type", "instance_type", required=True, metavar="TYPE",
              help="new GPU instance type, e.g. g6e.xlarge")
@click.option("--warmup", default=300, show_default=True, help="seconds a new replica needs to become ready")
def change_gpu(stack: str | None, endpoint_name: str | None, asg: str | None, region: str | None,
               instance_type: str, warmup: int) -> None:
    """New launch-template version with TYPE; replicas replaced launch-before-terminate."""
    r = resolve(stack, endpoint_name, asg, region)
    ops.check_gpu(instance_type, None)
    if r.stack is not None and r.endpoint is not None:
        # Validate the stack change before touching AWS: a type the spec rejects changes nothing.
        r.stack.set_fields(r.endpoint.name, gpu_instance_type=instance_type)
    change = ops.change_gpu(r.target, instance_type, instance_warmup_s=warmup)
    if change.warning:
        click.echo(f"warning: {change.warning}", err=True)
    click.echo(f"{r.target.asg_name}: launch template {change.launch_template_id} version {change.version} "
               f"launches {change.instance_type} (was {change.previous or '?'})")
    if change.refresh_id:
        click.echo(f"instance refresh {change.refresh_id}: replacing replicas, launch before terminate; "
                   "old replicas drain their streams first")
    else:
        click.echo("no running replicas: the next one launches as " + change.instance_type)
    r.write(f"gpu_instance_type: {instance_type}", gpu_instance_type=instance_type)

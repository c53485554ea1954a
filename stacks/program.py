"""The stack program: stack config -> one Deployment per endpoint -> exports.

Exports, per endpoint under `endpoints.<name>` and, when the stack has exactly one endpoint,
also at the top level: endpoint_url, api_key (a Pulumi secret), dashboard_url, variant.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pulumi

from components.deployment import Deployment, DeploymentArgs
from stacks.config import StackConfig, from_pulumi
from warmstart.spec import EndpointConfig

if TYPE_CHECKING:
    from components.eks_deployment import EksDeployment


def _ec2(cfg: StackConfig, ep: EndpointConfig) -> Deployment:
    return Deployment(ep.name, DeploymentArgs(endpoint=ep, variant=cfg.variant_of(ep), region=cfg.region,
                                              image_uri=cfg.image_for(ep), gate_image_uri=cfg.gate_image_for(ep),
                                              ebs_kms_key_arns=cfg.ebs_kms_key_arns))


def _eks(cfg: StackConfig, ep: EndpointConfig) -> EksDeployment:
    # Imported only for EKS stacks: pulumi-kubernetes and the EKS components take seconds to
    # import, and the EC2 preview should not pay for them.
    from components.eks_deployment import EksDeployment, EksDeploymentArgs, eks_settings_from_pulumi

    return EksDeployment(ep.name, EksDeploymentArgs(endpoint=ep, variant=cfg.variant_of(ep), region=cfg.region,
                                                    image_uri=cfg.image_for(ep), eks=eks_settings_from_pulumi()))


# substrate -> builder; both return components with the same outputs.
SUBSTRATES: dict[str, Callable[[StackConfig, EndpointConfig], Deployment | EksDeployment]] = {
    "ec2": _ec2, "eks": _eks,
}


def deploy(cfg: StackConfig) -> dict[str, Deployment | EksDeployment]:
    built = {ep.name: SUBSTRATES[cfg.substrate](cfg, ep) for ep in cfg.endpoints}
    per_endpoint = {
        name: {"endpoint_url": d.endpoint_url, "api_key": d.api_key, "dashboard_url": d.dashboard_url,
               "variant": d.variant}
        for name, d in built.items()
    }
    pulumi.export("endpoints", per_endpoint)
    if len(built) == 1:
        for key, value in next(iter(per_endpoint.values())).items():
            pulumi.export(key, value)
    return built


def main() -> None:
    deploy(from_pulumi())

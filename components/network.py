"""Network: a VPC over >= 2 AZs, or an adopted one.

The AZs are the first `az_count` (in name order) of those where the region offers every
instance type the endpoint launches (DescribeInstanceTypeOfferings, LocationType
availability-zone): a GPU type is offered in only some AZs of a region, and an ASG whose subnet
sits in an AZ without its type fails every launch there. Too few such AZs is a one-line error.

Public subnets hold only the ALB (and the NAT gateways); gate instances, replicas and the cache
live in private subnets with no public addresses. Private subnets reach AWS APIs, ECR and the
image registry through NAT (one per AZ where `nat_per_az`, so one AZ failing does not cut the
others off) plus a free S3 gateway endpoint (ECR layers and weights come from S3).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from components.base import Tags, child, invoke, named
from warmstart.errors import ConfigError
from warmstart.spec import ExistingNetwork


def choose_azs(available: Sequence[str], offered: Mapping[str, Iterable[str]], n: int, region: str) -> list[str]:
    """The first n available AZs (by name) that offer every instance type in `offered`."""
    ok = [az for az in sorted(available) if all(az in set(zones) for zones in offered.values())]
    if len(ok) < n:
        per_type = "; ".join(f"{t}: {', '.join(sorted(set(z) & set(available))) or 'none'}"
                             for t, z in sorted(offered.items()))
        raise ConfigError(
            f"region {region} offers every instance type of this endpoint in {len(ok)} AZ(s) "
            f"({', '.join(ok) or 'none'}), fewer than the {n} needed ({per_type}); pick types offered in "
            f"{n} AZs of {region} (aws ec2 describe-instance-type-offerings --location-type availability-zone) "
            "or another region"
        )
    return ok[:n]


def check_adopted_zones(subnets: Sequence[str], zones: Sequence[str], offered: Mapping[str, Iterable[str]],
                        types: Sequence[str], region: str) -> list[str]:
    """An adopted network's private subnets must each sit in an AZ that offers every type."""
    for subnet, az in zip(subnets, zones, strict=True):
        missing = [t for t in types if az not in set(offered.get(t, ()))]
        if missing:
            raise ConfigError(
                f"network.private_subnet_ids: {subnet} is in {az}, where {region} does not offer "
                f"{', '.join(missing)}; use private subnets in AZs that offer every instance type of this endpoint"
            )
    return list(zones)


def offerings_by_type(instance_types: Sequence[str], locations: Sequence[str]) -> dict[str, list[str]]:
    """GetInstanceTypeOfferings' parallel lists as type -> AZs."""
    out: dict[str, list[str]] = {}
    for t, loc in zip(instance_types, locations, strict=True):
        out.setdefault(t, []).append(loc)
    return out


@dataclass
class NetworkArgs:
    tags: Tags
    region: str
    cidr_block: str = "10.40.0.0/16"
    az_count: int = 2
    nat_per_az: bool = False
    existing: ExistingNetwork | None = None
    # Every EC2 instance type the endpoint launches in these subnets (GPU, gate).
    instance_types: Sequence[str] = ()


class Network(pulumi.ComponentResource):
    vpc_id: pulumi.Output[str]
    vpc_cidr: pulumi.Output[str]
    public_subnet_ids: pulumi.Output[list[str]]
    private_subnet_ids: pulumi.Output[list[str]]
    availability_zones: pulumi.Output[list[str]]
    az_count: int

    def __init__(self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("warmstart:network:Network", name, None, opts)
        if args.az_count < 2:
            raise ValueError(f"az_count={args.az_count}: the ALB needs subnets in at least 2 AZs; use 2 or more")
        if args.existing is not None:
            self._adopt(args.existing, args)
        else:
            self._create(name, args)
        self.register_outputs({
            "vpc_id": self.vpc_id,
            "public_subnet_ids": self.public_subnet_ids,
            "private_subnet_ids": self.private_subnet_ids,
        })

    def _adopt(self, net: ExistingNetwork, args: NetworkArgs) -> None:
        self.az_count = len(net.private_subnet_ids)
        self.vpc_id = pulumi.Output.from_input(net.vpc_id)
        self.vpc_cidr = aws.ec2.get_vpc_output(id=net.vpc_id, opts=invoke(self)).cidr_block
        self.public_subnet_ids = pulumi.Output.from_input(list(net.public_subnet_ids))
        self.private_subnet_ids = pulumi.Output.from_input(list(net.private_subnet_ids))
        zones = pulumi.Output.all(*[
            aws.ec2.get_subnet_output(id=s, opts=invoke(self)).availability_zone for s in net.private_subnet_ids
        ]).apply(list)
        types = sorted(set(args.instance_types))
        if types:
            offers = self._offerings(types)
            subnets = list(net.private_subnet_ids)
            region = args.region
            zones = pulumi.Output.all(zones, offers.instance_types, offers.locations).apply(
                lambda a: check_adopted_zones(subnets, a[0], offerings_by_type(a[1], a[2]), types, region))
        self.availability_zones = zones

    def _offerings(self, types: Sequence[str]) -> pulumi.Output[aws.ec2.GetInstanceTypeOfferingsResult]:
        return aws.ec2.get_instance_type_offerings_output(
            location_type="availability-zone", opts=invoke(self),
            filters=[aws.ec2.GetInstanceTypeOfferingsFilterArgs(name="instance-type", values=list(types))])

    def _create(self, name: str, args: NetworkArgs) -> None:
        n = args.az_count
        self.az_count = n
        # Opt-in zones (Local/Wavelength Zones) are not where a GPU ASG belongs.
        azs = aws.get_availability_zones_output(
            state="available", opts=invoke(self),
            filters=[aws.GetAvailabilityZonesFilterArgs(name="opt-in-status", values=["opt-in-not-required"])])
        types = sorted(set(args.instance_types))
        region = args.region
        if types:
            offers = self._offerings(types)
            chosen = pulumi.Output.all(azs.names, offers.instance_types, offers.locations).apply(
                lambda a: choose_azs(a[0], {t: offerings_by_type(a[1], a[2]).get(t, []) for t in types}, n, region))
        else:
            chosen = azs.names.apply(lambda names: choose_azs(names, {}, n, region))
        az = [chosen.apply(lambda names, i=i: names[i]) for i in range(n)]  # type: ignore[misc]
        self.availability_zones = chosen
        blocks = list(ipaddress.ip_network(args.cidr_block).subnets(new_prefix=20))
        if len(blocks) < 2 * n:
            raise ValueError(f"cidr_block={args.cidr_block} is too small for {n} AZs; use a /16")
        t = args.tags

        vpc = aws.ec2.Vpc(
            f"{name}-vpc", cidr_block=args.cidr_block, enable_dns_hostnames=True, enable_dns_support=True,
            tags=named(t, f"{name}-vpc"), opts=child(self),
        )
        # The default security group allows all traffic between its members; nothing should use it.
        aws.ec2.DefaultSecurityGroup(f"{name}-default-sg", vpc_id=vpc.id, tags=named(t, f"{name}-default"),
                                     opts=child(self))
        igw = aws.ec2.InternetGateway(f"{name}-igw", vpc_id=vpc.id, tags=named(t, f"{name}-igw"), opts=child(self))
        public_rt = aws.ec2.RouteTable(
            f"{name}-public-rt", vpc_id=vpc.id,
            routes=[aws.ec2.RouteTableRouteArgs(cidr_block="0.0.0.0/0", gateway_id=igw.id)],
            tags=named(t, f"{name}-public"), opts=child(self),
        )
        public: list[aws.ec2.Subnet] = []
        private: list[aws.ec2.Subnet] = []
        private_rts: list[aws.ec2.RouteTable] = []
        nats: list[aws.ec2.NatGateway] = []
        for i in range(n):
            pub = aws.ec2.Subnet(
                f"{name}-public-{i}", vpc_id=vpc.id, cidr_block=str(blocks[i]), availability_zone=az[i],
                map_public_ip_on_launch=False, tags=named({**t, "tier": "public"}, f"{name}-public-{i}"),
                opts=child(self),
            )
            aws.ec2.RouteTableAssociation(f"{name}-public-{i}", subnet_id=pub.id, route_table_id=public_rt.id,
                                          opts=child(self))
            public.append(pub)
            if i == 0 or args.nat_per_az:
                eip = aws.ec2.Eip(f"{name}-nat-{i}", domain="vpc", tags=named(t, f"{name}-nat-{i}"),
                                  opts=child(self))
                nats.append(aws.ec2.NatGateway(
                    f"{name}-nat-{i}", allocation_id=eip.id, subnet_id=pub.id, tags=named(t, f"{name}-nat-{i}"),
                    opts=child(self, depends_on=[igw]),
                ))
            priv = aws.ec2.Subnet(
                f"{name}-private-{i}", vpc_id=vpc.id, cidr_block=str(blocks[n + i]), availability_zone=az[i],
                map_public_ip_on_launch=False, tags=named({**t, "tier": "private"}, f"{name}-private-{i}"),
                opts=child(self),
            )
            rt = aws.ec2.RouteTable(
                f"{name}-private-rt-{i}", vpc_id=vpc.id,
                routes=[aws.ec2.RouteTableRouteArgs(cidr_block="0.0.0.0/0", nat_gateway_id=nats[-1].id)],
                tags=named(t, f"{name}-private-{i}"), opts=child(self),
            )
            aws.ec2.RouteTableAssociation(f"{name}-private-{i}", subnet_id=priv.id, route_table_id=rt.id,
                                          opts=child(self))
            private.append(priv)
            private_rts.append(rt)
        aws.ec2.VpcEndpoint(
            f"{name}-s3", vpc_id=vpc.id, service_name=f"com.amazonaws.{args.region}.s3",
            vpc_endpoint_type="Gateway", route_table_ids=[rt.id for rt in private_rts],
            tags=named(t, f"{name}-s3"), opts=child(self),
        )
        self.vpc_id = vpc.id
        self.vpc_cidr = vpc.cidr_block
        self.public_subnet_ids = pulumi.Output.all(*[s.id for s in public]).apply(list)
        self.private_subnet_ids = pulumi.Output.all(*[s.id for s in private]).apply(list)

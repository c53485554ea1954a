"""Network: >= 2 AZs, public subnets for the ALB only, private for gate + replicas, NAT, or adoption."""

from __future__ import annotations

import pytest

from components.network import Network, NetworkArgs
from stacks.preview import AwsMocks, Graph, _h
from tests.support.pulumi_harness import Recorder, render_values, stack_graph, stack_values, with_endpoint

SUBNET = "aws:ec2/subnet:Subnet"


def _subnets(g: Graph, tier: str) -> list:
    return [r for r in g.of_type(SUBNET) if r.inputs["tags"]["tier"] == tier]


@pytest.mark.parametrize("env", ["dev", "staging", "prod"])
def test_two_azs_public_for_alb_private_for_machines(env: str) -> None:
    g = stack_graph(env)
    public, private = _subnets(g, "public"), _subnets(g, "private")
    assert len({s.inputs["availabilityZone"] for s in public}) >= 2
    assert len({s.inputs["availabilityZone"] for s in private}) >= 2
    assert all(s.inputs["mapPublicIpOnLaunch"] is False for s in public + private)
    public_ids = sorted(s.id for s in public)
    private_ids = sorted(s.id for s in private)
    assert sorted(g.one("aws:lb/loadBalancer:LoadBalancer").inputs["subnets"]) == public_ids
    for asg in g.of_type("aws:autoscaling/group:Group"):
        assert sorted(asg.inputs["vpcZoneIdentifiers"]) == private_ids, asg.name
    assert sorted(g.one("aws:elasticache/subnetGroup:SubnetGroup").inputs["subnetIds"]) == private_ids


@pytest.mark.parametrize(("env", "nats"), [("dev", 1), ("staging", 1), ("prod", 2)])
def test_private_subnets_route_out_through_nat(env: str, nats: int) -> None:
    g = stack_graph(env)
    assert len(g.of_type("aws:ec2/natGateway:NatGateway")) == nats
    nat_ids = {n.id for n in g.of_type("aws:ec2/natGateway:NatGateway")}
    igw = g.one("aws:ec2/internetGateway:InternetGateway")
    tables = {rt.name: rt for rt in g.of_type("aws:ec2/routeTable:RouteTable")}
    assert tables["chat-net-public-rt"].inputs["routes"] == [{"cidrBlock": "0.0.0.0/0", "gatewayId": igw.id}]
    private_rts = [rt for n, rt in tables.items() if "private" in n]
    assert len(private_rts) == 2
    assert {rt.inputs["routes"][0]["natGatewayId"] for rt in private_rts} <= nat_ids
    s3 = g.one("aws:ec2/vpcEndpoint:VpcEndpoint")
    assert s3.inputs["vpcEndpointType"] == "Gateway" and s3.inputs["serviceName"] == "com.amazonaws.us-east-1.s3"
    assert sorted(s3.inputs["routeTableIds"]) == sorted(rt.id for rt in private_rts)
    # nothing may use the VPC's default security group
    assert "ingress" not in g.one("aws:ec2/defaultSecurityGroup:DefaultSecurityGroup").inputs


def test_adopts_an_existing_vpc() -> None:
    net = {"vpc_id": "vpc-0abc", "public_subnet_ids": ["subnet-p1", "subnet-p2"],
           "private_subnet_ids": ["subnet-q1", "subnet-q2"]}
    g = render_values(with_endpoint("dev", network=net))
    for t in ("aws:ec2/vpc:Vpc", SUBNET, "aws:ec2/natGateway:NatGateway", "aws:ec2/internetGateway:InternetGateway"):
        assert g.of_type(t) == [], t
    assert g.one("aws:lb/loadBalancer:LoadBalancer").inputs["subnets"] == ["subnet-p1", "subnet-p2"]
    assert g.one("aws:autoscaling/group:Group", "replicas-asg").inputs["vpcZoneIdentifiers"] == ["subnet-q1", "subnet-q2"]
    assert all(sg.inputs["vpcId"] == "vpc-0abc" for sg in g.of_type("aws:ec2/securityGroup:SecurityGroup"))


def test_one_az_is_refused(pulumi_record: Recorder) -> None:
    with pytest.raises(ValueError, match=r"^az_count=1: the ALB needs subnets in at least 2 AZs; use 2 or more$"):
        pulumi_record(lambda: Network("n", NetworkArgs(tags={}, region="us-east-1", az_count=1)))


def test_three_azs(pulumi_record: Recorder) -> None:
    g = pulumi_record(lambda: Network("n", NetworkArgs(tags={"endpoint": "e"}, region="us-east-1", az_count=3,
                                                       nat_per_az=True)))
    assert len(_subnets(g, "private")) == 3 and len(g.of_type("aws:ec2/natGateway:NatGateway")) == 3
    assert len({s.inputs["cidrBlock"] for s in g.of_type(SUBNET)}) == 6


def test_azs_offer_every_instance_type_of_the_endpoint() -> None:
    """DescribeInstanceTypeOfferings (LocationType availability-zone): a GPU type is offered in only
    some AZs of a region; the subnets go where the GPU AND the gate type are offered, never simply
    in the region's first two AZ names."""
    mocks = AwsMocks(offerings={"g6.xlarge": "bc"})  # dev's GPU type: not in us-east-1a
    g = render_values(stack_values("dev"), mocks=mocks)
    assert sorted({s.inputs["availabilityZone"] for s in g.of_type(SUBNET)}) == ["us-east-1b", "us-east-1c"]


def test_too_few_azs_offering_the_types_is_one_line() -> None:
    mocks = AwsMocks(offerings={"g6.xlarge": "ab", "c7i.large": "bc"})
    # raised inside an apply: Pulumi wraps it in ValueErrors that carry its one line
    with pytest.raises(ValueError, match=r"region us-east-1 offers every instance type of this endpoint in 1 "
                                          r"AZ\(s\) \(us-east-1b\), fewer than the 2 needed \(c7i.large: us-east-1b, "
                                          r"us-east-1c; g6.xlarge: us-east-1a, us-east-1b\); pick types offered"):
        render_values(stack_values("dev"), mocks=mocks)


def test_adopted_subnets_must_be_where_the_types_are() -> None:
    net = {"vpc_id": "vpc-0abc", "public_subnet_ids": ["subnet-p1", "subnet-p2"],
           "private_subnet_ids": ["subnet-q1", "subnet-q2"]}
    # the mock puts these subnet ids in us-east-1c (a hash of the id)
    assert [f"us-east-1{'abc'[int(_h(s), 16) % 3]}" for s in net["private_subnet_ids"]] == ["us-east-1c"] * 2
    render_values(with_endpoint("dev", network=net), mocks=AwsMocks(offerings={"g6.xlarge": "c"}))
    with pytest.raises(ValueError, match=r"network.private_subnet_ids: subnet-q1 is in us-east-1c, "
                                         r"where us-east-1 does not offer g6.xlarge; use private subnets"):
        render_values(with_endpoint("dev", network=net), mocks=AwsMocks(offerings={"g6.xlarge": "ab"}))

"""Day-two operations on a deployed endpoint: lifecycle (asg), weight snapshots (snapshot), and the
stack files those operations keep in agreement with what they did (stackconfig).

Every function here talks to AWS through boto3 alone: no Pulumi CLI, so the same code serves the
`warmstart endpoint ...` commands, CI jobs and break-glass use against a bare ASG name.
"""

"""Scaling of the replica pool: the pure rules (policy), the shared state gates agree on
(coordination: Redis or memory), the idle controller, and the ASG calls they use (asg).

Where it runs and why: see docs/operations.md ("Who scales to zero").
"""

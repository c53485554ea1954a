"""Monitoring and cost: the gate's metrics (Prometheus locally, CloudWatch on AWS) as one summary,
an on-demand cost estimate, and SVG plots. The CLI is `warmstart endpoint metrics` (cli.py)."""

"""Entry point of `pulumi up` (Pulumi.yaml: main: stacks/)."""

from stacks.program import main

main()

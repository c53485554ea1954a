"""The gate: auth, quota, routing, streaming and wake-from-zero in front of vLLM replicas."""

"""The embedded default: `warmstart local up` (gate + local pool of real vLLM on this machine)."""

# Shared fixtures live in warmstart.testing (the library ships its own test helpers); each test
# area registers its plugin module here.
pytest_plugins = [
    "warmstart.testing.redis_server",
    "warmstart.testing.playground",
    "warmstart.testing.moto_server",
    "warmstart.testing.pulumi_harness",
    "warmstart.testing.fleet",
    "warmstart.testing.kube_api",
    "warmstart.testing.upstream",
    "warmstart.testing.gate_server",
    "warmstart.testing.vllm_server",
]

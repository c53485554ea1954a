# Shared fixtures live in tests.support (the library ships its own test helpers); each test
# area registers its plugin module here.
pytest_plugins = [
    "tests.support.redis_server",
    "tests.support.playground",
    "tests.support.moto_server",
    "tests.support.pulumi_harness",
    "tests.support.fleet",
    "tests.support.kube_api",
    "tests.support.upstream",
    "tests.support.gate_server",
    "tests.support.vllm_server",
]

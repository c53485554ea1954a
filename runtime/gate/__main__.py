"""`python -m runtime.gate --config FILE [--bind HOST:PORT] [--workers N]`: the gate under gunicorn.

This process becomes gunicorn's master. It imports neither the app nor redis/urllib3: each worker
does, after gunicorn's gevent worker has monkey-patched it (see gunicorn_conf.py).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from gunicorn.app.base import BaseApplication  # type: ignore[import-untyped]


class GateApplication(BaseApplication):
    def __init__(self, config_path: str, overrides: dict[str, Any]) -> None:
        self.config_path = config_path
        self.overrides = overrides
        super().__init__()

    def load_config(self) -> None:
        from runtime.gate import gunicorn_conf

        for name in dir(gunicorn_conf):
            if name in self.cfg.settings:
                self.cfg.set(name, getattr(gunicorn_conf, name))
        for name, value in self.overrides.items():
            self.cfg.set(name, value)

    def load(self) -> Any:
        from runtime.gate.app import create_app
        from runtime.gate.config import GateConfig

        return create_app(GateConfig.load(self.config_path))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m runtime.gate", description="Run the warmstart gate under gunicorn.")
    p.add_argument("--config", required=True, help="gate config file (YAML or JSON)")
    p.add_argument("--bind", help="HOST:PORT (default 127.0.0.1:8080)")
    p.add_argument("--workers", type=int, help="gevent worker processes (default: CPU count)")
    p.add_argument("--graceful-timeout", type=int, help="seconds running requests get on shutdown")
    a = p.parse_args(argv)

    # Validate before forking workers: a bad config is one line and exit 2, not N worker tracebacks.
    from runtime.gate.config import GateConfig
    from warmstart.errors import WarmstartError

    try:
        config = GateConfig.load(a.config)
    except WarmstartError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    overrides: dict[str, Any] = {}
    if a.bind:
        overrides["bind"] = [a.bind]
    if a.workers:
        overrides["workers"] = a.workers
    if a.graceful_timeout is not None:
        overrides["graceful_timeout"] = a.graceful_timeout
    if config.store == "memory" and (a.workers or 0) != 1:
        # Leases and quotas held in one process's memory only bind that process.
        overrides["workers"] = 1
    GateApplication(a.config, overrides).run()


if __name__ == "__main__":
    main()

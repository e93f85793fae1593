"""``python -m gateway``: run the REST gateway (and the web page) alone."""

from __future__ import annotations

import os

import uvicorn

from ai_platform.config import build_parser, settings_from_args, split_addr
from ai_platform.logs import setup_logging
from gateway.app import config_from_env, create_app


def main(argv: list[str] | None = None) -> None:
    parser = build_parser("gateway", "REST gateway: translates REST to the platform's gRPC services; serves web/.")
    parser.add_argument("--token", default=os.environ.get("AIP_TOKEN", ""),
                        help="bearer token required on every route but /healthz and the page (AIP_TOKEN)")
    settings = settings_from_args("gateway", parser.parse_args(argv))
    setup_logging(settings.log_level)
    host, port = split_addr(settings.gateway_addr)
    uvicorn.run(create_app(config_from_env(settings)), host=host, port=port, log_level="warning",
                timeout_graceful_shutdown=int(settings.grace_s), access_log=False)


if __name__ == "__main__":
    main()

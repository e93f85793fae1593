"""``python -m gateway``: run the REST gateway (and the web page) alone (``--help`` lists its settings)."""

from __future__ import annotations

import uvicorn

from ai_platform.core.logs import setup_logging
from ai_platform.core.settings import GatewaySettings, split_addr
from gateway.app import create_app
from gateway.connections import header_timeout_protocol


def main(argv: list[str] | None = None) -> None:
    settings = GatewaySettings.load(argv)
    setup_logging(settings.log_level)
    host, port = split_addr(settings.gateway_addr)
    uvicorn.run(create_app(settings), host=host, port=port, log_level="warning",
                timeout_graceful_shutdown=int(settings.grace_s), access_log=False,
                http=header_timeout_protocol(settings.header_timeout_s), timeout_keep_alive=settings.keep_alive_s)


if __name__ == "__main__":
    main()

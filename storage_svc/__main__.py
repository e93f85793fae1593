"""``python -m storage_svc``: run the storage service alone (``--help`` lists its settings)."""

from __future__ import annotations

import asyncio
import logging
import sys
import time

from ai_platform.core.logs import setup_logging
from ai_platform.core.server import Servicer, serve
from ai_platform.core.settings import StorageSettings
from ai_platform.protos.aiplatform.v1 import storage_pb2, storage_pb2_grpc
from storage_svc.catalog import LakeCatalog
from storage_svc.server import StorageServicer

log = logging.getLogger("storage_svc")


LAKE_RETRY_S = 2.0  # how often an unreachable lake is tried again at start
LAKE_LOG_EVERY_S = 10.0


def open_catalog(settings: StorageSettings) -> LakeCatalog:
    """The lake's catalog, waiting up to ``lake_wait_s`` for an object store that is not up yet (in a deployment
    the store may start after this service); exit status 1 naming the lake once that time is spent."""
    deadline, last_said = time.monotonic() + settings.lake_wait_s, 0.0
    while True:
        try:
            return LakeCatalog(settings.home_uri(), settings.storage_options, settings.create_bucket)
        except OSError as exc:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if time.monotonic() >= deadline:
                waited = f" (waited {settings.lake_wait_s:g}s)" if settings.lake_wait_s else ""
                print(f"storage: cannot open the lake at {settings.home_uri()}{waited}: {detail}", file=sys.stderr)
                sys.exit(1)
            if time.monotonic() - last_said >= LAKE_LOG_EVERY_S:
                last_said = time.monotonic()
                log.warning("waiting for the lake at %s: %s", settings.home_uri(), detail)
            time.sleep(LAKE_RETRY_S)


def main(argv: list[str] | None = None) -> None:
    settings = StorageSettings.load(argv)
    setup_logging(settings.log_level)
    catalog = open_catalog(settings)

    servicer = Servicer(
        StorageServicer(catalog, settings.max_message_bytes),
        storage_pb2_grpc.add_StorageServiceServicer_to_server,
        storage_pb2.DESCRIPTOR.services_by_name["StorageService"],
    )
    asyncio.run(serve(settings, [servicer]))


if __name__ == "__main__":
    main()

"""``python -m storage_svc``: run the storage service alone (``--help`` lists its settings)."""

from __future__ import annotations

import asyncio
import sys

from ai_platform.core.logs import setup_logging
from ai_platform.core.server import Servicer, serve
from ai_platform.core.settings import StorageSettings
from ai_platform.protos.aiplatform.v1 import storage_pb2, storage_pb2_grpc
from storage_svc.catalog import LakeCatalog
from storage_svc.server import StorageServicer


def main(argv: list[str] | None = None) -> None:
    settings = StorageSettings.load(argv)
    setup_logging(settings.log_level)
    try:
        catalog = LakeCatalog(settings.home_uri(), settings.storage_options)
    except OSError as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"storage: cannot open the lake at {settings.home_uri()}: {detail}", file=sys.stderr)
        sys.exit(1)

    servicer = Servicer(
        StorageServicer(catalog, settings.max_message_bytes),
        storage_pb2_grpc.add_StorageServiceServicer_to_server,
        storage_pb2.DESCRIPTOR.services_by_name["StorageService"],
    )
    asyncio.run(serve(settings, [servicer]))


if __name__ == "__main__":
    main()

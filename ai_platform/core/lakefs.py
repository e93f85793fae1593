"""The lake's files as an Arrow filesystem: a local directory, or ``s3://`` configured from Lance's storage options.

One reading of the options for every part that lists, deletes or copies files beside Lance (storage_svc's catalog,
task scripts through ``ai_platform.sdk.filesystem``), so an endpoint, keys or region given once reach them all.
"""

from __future__ import annotations

import pyarrow.fs as pafs


def _option(options: dict[str, str], *names: str) -> str | None:
    for name in names:
        for key in (name, name.upper()):
            if options.get(key):
                return options[key]
    return None


def lake_filesystem(home: str, options: dict[str, str], create_bucket: bool = False) -> tuple[pafs.FileSystem, str]:
    """The Arrow filesystem for listing and deleting under ``home``, with the same settings Lance gets.

    Lance reads the storage options (object_store names); for ``s3://`` the same options configure
    Arrow's S3 client, so that an endpoint, keys or region given only there reach both. Unset ones
    fall back to the ``AWS_*`` variables, as in Lance. ``create_bucket``: a missing bucket is made.
    """
    if not home.startswith("s3://"):
        return pafs.FileSystem.from_uri(home)
    kwargs: dict[str, str] = {}
    for arrow_name, names in (
        ("access_key", ("aws_access_key_id", "access_key_id")),
        ("secret_key", ("aws_secret_access_key", "secret_access_key")),
        ("session_token", ("aws_session_token", "session_token", "aws_token", "token")),
        ("region", ("aws_region", "region")),
    ):
        if value := _option(options, *names):
            kwargs[arrow_name] = value
    if endpoint := _option(options, "aws_endpoint", "aws_endpoint_url", "endpoint", "endpoint_url"):
        scheme, _, rest = endpoint.rpartition("://")
        kwargs["endpoint_override"], kwargs["scheme"] = rest.rstrip("/"), scheme or "https"
    if not kwargs and not create_bucket:
        return pafs.FileSystem.from_uri(home)
    return pafs.S3FileSystem(**kwargs, allow_bucket_creation=create_bucket), home.removeprefix("s3://").rstrip("/")



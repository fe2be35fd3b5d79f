"""Reading a bucket and key (or prefix) from operator arguments, as the amazon provider's operators do."""

from __future__ import annotations

from airflow_mpu_provider.multipart.errors import InvalidUploadRequest


def bucket_and_path(bucket: str | None, path: str, path_name: str) -> tuple[str, str]:
    """(bucket, path) from ``bucket`` + a relative ``path``, or from an ``s3://bucket/path`` URL.

    Uses ``S3Hook.get_s3_bucket_key`` (the amazon provider's own rules) and turns its exceptions
    into InvalidUploadRequest naming the argument to fix; ``path_name`` is that argument's name.
    """
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    example = f"{path_name}='s3://bucket/{'prefix' if path_name == 'prefix' else 'path'}'"
    if not bucket and not path:
        raise InvalidUploadRequest(f"no bucket: pass bucket=..., or {example}.")
    try:
        found_bucket, found_path = S3Hook.get_s3_bucket_key(bucket or None, path, "bucket", path_name)
    except Exception as e:  # S3HookUriParseFailure, TypeError: both mean "fix your arguments"
        raise InvalidUploadRequest(
            f"cannot tell the bucket from bucket={bucket!r}, {path_name}={path!r}: pass bucket=..., or {example} ({e})."
        ) from None
    if not found_bucket:
        raise InvalidUploadRequest(f"no bucket: pass bucket=..., or {example} ({path_name}={path!r}).")
    return found_bucket, found_path

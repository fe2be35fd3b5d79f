"""Reading a bucket and key (or prefix) from operator arguments, keeping the key exactly as written.

An S3 key is any UTF-8 string: ``?``, ``#``, ``%``, spaces, ``:`` and control characters are all
valid in it. A URL parser (``urllib.parse``, and with it ``S3Hook.get_s3_bucket_key``) reads ``?``
and ``#`` as the start of a query and a fragment and silently uploads ``dumps/app?v=2.dump`` to
``dumps/app``; here everything after ``s3://bucket/`` is the key, byte for byte.

``bucket=`` together with an ``s3://`` URL is accepted when both name the same bucket and refused
otherwise (the amazon provider refuses both at once; refusing only a contradiction lets a templated
``bucket`` and a full URL coexist).
"""

from __future__ import annotations

import re

from airflow_mpu_provider.multipart.errors import InvalidUploadRequest

SCHEME = "s3://"
#: Characters a bucket name can hold (S3's rules plus the uppercase and "_" of legacy and
#: S3-compatible stores); anything else means the argument is not what the user thinks it is.
_BUCKET = re.compile(r"^[A-Za-z0-9._-]+$")


def split_s3_url(url: str) -> tuple[str, str]:
    """(bucket, key) of ``s3://bucket/key``: the key is everything after the first "/" that follows
    the bucket, unchanged (no query, fragment or percent-decoding). ``s3://bucket`` gives key ""."""
    if not url.startswith(SCHEME):
        raise ValueError(f"{url!r} does not start with {SCHEME}")
    bucket, _, key = url[len(SCHEME) :].partition("/")
    return bucket, key


def _check_bucket(bucket: str, where: str) -> str:
    if not _BUCKET.match(bucket):
        raise InvalidUploadRequest(
            f"{where} {bucket!r} is not a bucket name (letters, digits, '.', '-' and '_' only); "
            "check the bucket, or put characters such as '?', '#' or ' ' in the key instead."
        )
    return bucket


def bucket_and_path(bucket: str | None, path: str | None, path_name: str) -> tuple[str, str]:
    """(bucket, path) from ``bucket`` + a ``path`` kept as written, or from an ``s3://bucket/path`` URL.

    ``path_name`` is the argument's name ("key", "prefix"), used in the messages that say what to fix.
    Raises InvalidUploadRequest when no bucket can be told, or when ``bucket`` and the URL disagree.
    """
    path = path or ""
    example = f"{path_name}='s3://bucket/{'prefix' if path_name == 'prefix' else 'path'}'"
    if not isinstance(path, str) or (bucket is not None and not isinstance(bucket, str)):
        raise InvalidUploadRequest(
            f"bucket and {path_name} must be strings, got bucket={bucket!r}, {path_name}={path!r}."
        )
    if path.startswith(SCHEME):
        url_bucket, found = split_s3_url(path)
        if not url_bucket:
            raise InvalidUploadRequest(f"{path_name}={path!r} names no bucket; use {example}.")
        _check_bucket(url_bucket, f"the bucket in {path_name}={path!r},")
        if bucket and bucket != url_bucket:
            raise InvalidUploadRequest(
                f"bucket={bucket!r} and {path_name}={path!r} name different buckets; give the bucket once: "
                f"either bucket=... and a {path_name} relative to it, or only {example}."
            )
        return url_bucket, found
    if not bucket:
        raise InvalidUploadRequest(f"no bucket: pass bucket=..., or {example} ({path_name}={path!r}).")
    return _check_bucket(bucket, "bucket"), path


#: S3's limit on key length, in UTF-8 bytes.
MAX_KEY_BYTES = 1024


def object_target(bucket: str | None, key: str | None) -> tuple[str, str]:
    """(bucket, key) of one object from ``bucket`` + ``key`` or an ``s3://`` key, checked against S3's rules
    (a key naming an object, valid UTF-8, at most ``MAX_KEY_BYTES``) before any request is made."""
    if not key:
        raise InvalidUploadRequest("key is empty; give the object key (or a full s3://bucket/key URL).")
    bucket, path = bucket_and_path(bucket, key, "key")
    if not path:
        raise InvalidUploadRequest(f"key {key!r} names no object; add the object path after the bucket.")
    try:
        encoded = path.encode()
    except UnicodeEncodeError as e:
        raise InvalidUploadRequest(f"key {path!r} is not valid UTF-8 ({e.reason}); S3 keys are UTF-8.") from None
    if len(encoded) > MAX_KEY_BYTES:
        raise InvalidUploadRequest(
            f"key is {len(encoded):,} bytes in UTF-8; S3 allows at most {MAX_KEY_BYTES:,}. Shorten it."
        )
    return bucket, path

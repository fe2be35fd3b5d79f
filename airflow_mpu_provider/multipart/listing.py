"""Listing the incomplete multipart uploads under a prefix (ListMultipartUploads), every page of it.

Resume (finding an earlier upload of the same key) and the stale-upload sweep both start here.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from botocore.compat import unquote_str
from botocore.exceptions import ClientError

from airflow_mpu_provider.multipart.errors import S3UploadError, s3_error
from airflow_mpu_provider.multipart.request_args import request_args


def list_incomplete_uploads(
    client: Any, bucket: str, prefix: str, *, extra_args: Mapping[str, Any] | None = None
) -> Iterator[dict[str, Any]]:
    """Every incomplete multipart upload under ``prefix``, page after page (KeyMarker/UploadIdMarker).

    Asked with ``EncodingType=url`` so that keys XML 1.0 cannot carry (control characters) survive the
    listing; keys and markers come back decoded (botocore decodes only ListObjects* by itself).
    ``extra_args`` may hold the per-request arguments (RequestPayer, ExpectedBucketOwner).
    """
    args: dict[str, Any] = {
        "Bucket": bucket,
        "EncodingType": "url",
        **request_args(client, "ListMultipartUploads", extra_args),
    }
    if prefix:
        args["Prefix"] = prefix
    markers: tuple[str, str] | None = None
    while True:
        try:
            response = decode_url_encoded_listing(client.list_multipart_uploads(**args))
        except ClientError as e:
            raise s3_error(e, operation="ListMultipartUploads", bucket=bucket, key=prefix, upload_id=None) from e
        uploads = response.get("Uploads", [])
        yield from uploads
        if not response.get("IsTruncated"):
            return
        last = uploads[-1] if uploads else {}
        next_markers = (
            response.get("NextKeyMarker") or last.get("Key") or "",
            response.get("NextUploadIdMarker") or last.get("UploadId") or "",
        )
        if not next_markers[0] or next_markers == markers:
            raise S3UploadError(
                f"ListMultipartUploads of s3://{bucket}/{prefix} says there is more but gives no new "
                f"position to continue from (markers {next_markers}); the store's pagination is broken.",
                code="BadPagination",
                operation="ListMultipartUploads",
                bucket=bucket,
                key=prefix,
                upload_id=None,
            )
        markers = next_markers
        args["KeyMarker"], args["UploadIdMarker"] = markers


def decode_url_encoded_listing(response: dict[str, Any]) -> dict[str, Any]:
    """A ListMultipartUploads answer with its keys and markers URL-decoded, if the store encoded them.

    A store that ignores ``EncodingType`` answers without it and its keys are left as they are.
    """
    if response.get("EncodingType") != "url":
        return response
    for name in ("KeyMarker", "NextKeyMarker", "Prefix", "Delimiter"):
        if isinstance(response.get(name), str):
            response[name] = unquote_str(response[name])
    for upload in response.get("Uploads", []):
        if isinstance(upload.get("Key"), str):
            upload["Key"] = unquote_str(upload["Key"])
    for common in response.get("CommonPrefixes", []):
        if isinstance(common.get("Prefix"), str):
            common["Prefix"] = unquote_str(common["Prefix"])
    return response

"""The request arguments every S3 call about one upload must repeat, and which call takes which.

S3 does not remember them from CreateMultipartUpload: a requester-pays bucket answers 403 to any
call without ``RequestPayer``, a bucket-owner check only protects the calls that carry
``ExpectedBucketOwner``, and an SSE-C object cannot be written to, listed (with checksums) or read
without its customer key. Which operation accepts which of them is read from botocore's own S3
service model, so a model that grows an argument (ListMultipartUploads gained ``RequestPayer``)
needs no change here.

Every S3 call of the package gets its arguments from ``request_args``: MultipartUpload's calls,
``list_incomplete_uploads``, ``head_object`` (the engine's final check and the operator's
``replace=False`` check), the resume lookup and the stale-upload janitor.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: Arguments that describe who is asking rather than the object: every request repeats them.
PER_REQUEST_ARGS = (
    "RequestPayer",
    "ExpectedBucketOwner",
    "SSECustomerAlgorithm",
    "SSECustomerKey",
    "SSECustomerKeyMD5",
)


def accepted_args(client: Any, operation: str) -> frozenset[str]:
    """The input members of ``operation`` in the client's service model (botocore caches the model)."""
    return frozenset(client.meta.service_model.operation_model(operation).input_shape.members)


def request_args(client: Any, operation: str, extra_args: Mapping[str, Any] | None) -> dict[str, Any]:
    """The per-request arguments in ``extra_args`` that ``operation`` takes, ready to pass as kwargs.

    Arguments the operation does not take are left out (AbortMultipartUpload has no SSE-C fields:
    sending them would fail botocore's parameter validation).
    """
    if not extra_args:
        return {}
    accepted = accepted_args(client, operation)
    return {name: extra_args[name] for name in PER_REQUEST_ARGS if name in extra_args and name in accepted}

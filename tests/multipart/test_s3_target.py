"""The bucket/key parser: the key is kept exactly as written, whatever characters it holds."""

from __future__ import annotations

import pytest

from airflow_mpu_provider.multipart.errors import InvalidUploadRequest
from airflow_mpu_provider.multipart.s3_target import bucket_and_path, split_s3_url

#: Valid S3 keys a URL parser would mangle (query, fragment, percent-escapes) or a strict parser refuse.
AWKWARD_KEYS = [
    "dumps/app?v=2.dump",
    "a?b#c%20d",
    "dumps/#1.sql",
    "with space/and+plus.bin",
    "%2F%00%zz",
    "db:prod/app.dump",
    "ünïcödé/日本語/🚀.bin",
    "ctl\x01\x1f\x7f/tab\there",
    "trailing/",
    "/leading-slash",
    "double//slash",
    "s3://inside/the/key",
    "..",
]


@pytest.mark.parametrize("key", AWKWARD_KEYS)
def test_url_keeps_everything_after_the_bucket_byte_for_byte(key):
    assert bucket_and_path(None, f"s3://bkt/{key}", "key") == ("bkt", key)


@pytest.mark.parametrize("key", [k for k in AWKWARD_KEYS if not k.startswith("s3://")])
def test_bucket_argument_takes_any_key_as_is(key):
    assert bucket_and_path("bkt", key, "key") == ("bkt", key)


def test_split_s3_url():
    assert split_s3_url("s3://b/k/x?y#z") == ("b", "k/x?y#z")
    assert split_s3_url("s3://b") == ("b", "")
    assert split_s3_url("s3://b/") == ("b", "")
    with pytest.raises(ValueError):
        split_s3_url("https://b/k")


def test_bucket_and_a_url_of_the_same_bucket_are_accepted():
    assert bucket_and_path("bkt", "s3://bkt/a?b", "key") == ("bkt", "a?b")


def test_bucket_and_a_url_of_another_bucket_are_refused_naming_both():
    with pytest.raises(InvalidUploadRequest, match=r"bucket='one' and key='s3://two/k' name different buckets"):
        bucket_and_path("one", "s3://two/k", "key")


@pytest.mark.parametrize(
    ("bucket", "path", "message"),
    [
        (None, "just/a/key", "no bucket: pass bucket="),
        (None, "", "no bucket"),
        ("", "k", "no bucket"),
        (None, "s3:///k", "names no bucket"),
        (None, "s3://b?x/k", "is not a bucket name"),
        (None, "s3://b#x/k", "is not a bucket name"),
        ("b k", "key", "is not a bucket name"),
        (None, "S3://upper/k", "no bucket"),  # not an s3:// URL (case matters), and no bucket given
        (None, 42, "must be strings"),
        (["b"], "k", "must be strings"),
    ],
)
def test_unclear_arguments_are_refused_saying_what_to_fix(bucket, path, message):
    with pytest.raises(InvalidUploadRequest, match=message):
        bucket_and_path(bucket, path, "key")


def test_the_message_names_the_argument():
    with pytest.raises(InvalidUploadRequest, match=r"prefix='s3://bucket/prefix'"):
        bucket_and_path(None, "dumps/", "prefix")


def test_prefix_may_be_empty_or_the_bucket_alone():
    assert bucket_and_path("b", "", "prefix") == ("b", "")
    assert bucket_and_path(None, "s3://b", "prefix") == ("b", "")
    assert bucket_and_path("b", None, "prefix") == ("b", "")


def test_works_without_the_amazon_providers_hook(monkeypatch):
    """A pure parser: S3Hook's URL parsing (which drops "?..." and "#...") is not involved."""
    import sys

    monkeypatch.setitem(sys.modules, "airflow.providers.amazon.aws.hooks.s3", None)  # importing it now fails
    assert bucket_and_path(None, "s3://bkt/dumps/app?v=2.dump", "key") == ("bkt", "dumps/app?v=2.dump")

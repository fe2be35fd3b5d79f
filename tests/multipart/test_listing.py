"""list_incomplete_uploads: every page, keys exactly as stored (EncodingType=url), broken pagination refused."""

from __future__ import annotations

import pytest

from airflow_mpu_provider.multipart.errors import S3UploadError
from airflow_mpu_provider.multipart.listing import decode_url_encoded_listing, list_incomplete_uploads
from airflow_mpu_provider.multipart.upload import MultipartUpload

BUCKET = "test-bucket"


class EncodingStore:
    """A ListMultipartUploads that url-encodes keys and pages one upload at a time, as S3 does."""

    def __init__(self, keys: list[str]) -> None:
        from urllib.parse import quote

        self.quote = quote
        self.keys = sorted(keys)
        self.calls: list[dict] = []

    def list_multipart_uploads(self, **kwargs):
        self.calls.append(kwargs)
        assert kwargs["EncodingType"] == "url"
        start = self.keys.index(kwargs["KeyMarker"]) + 1 if "KeyMarker" in kwargs else 0
        page = self.keys[start : start + 1]
        truncated = start + 1 < len(self.keys)
        response = {
            "EncodingType": "url",
            "Prefix": self.quote(kwargs.get("Prefix", ""), safe=""),
            "Uploads": [{"Key": self.quote(k, safe=""), "UploadId": f"id-{k}"} for k in page],
            "IsTruncated": truncated,
        }
        if truncated:
            response |= {"NextKeyMarker": self.quote(page[-1], safe=""), "NextUploadIdMarker": f"id-{page[-1]}"}
        return response


def test_listing_decodes_keys_and_markers_of_a_url_encoding_store():
    keys = ["k/a?b#c%20d", "k/ctl\x01\x02", "k/ünï code"]
    store = EncodingStore(keys)
    found = [u["Key"] for u in list_incomplete_uploads(store, BUCKET, "k/")]
    assert found == sorted(keys)
    assert [c.get("KeyMarker") for c in store.calls] == [None, *sorted(keys)[:-1]]  # decoded markers sent back


def test_a_store_that_ignores_encoding_type_is_read_as_is():
    class Plain:
        def list_multipart_uploads(self, **kwargs):
            return {"Uploads": [{"Key": "a%20b", "UploadId": "u"}], "IsTruncated": False}

    assert [u["Key"] for u in list_incomplete_uploads(Plain(), BUCKET, "")] == ["a%20b"]


def test_decoding_covers_markers_prefixes_and_common_prefixes_but_leaves_upload_ids():
    response = {
        "EncodingType": "url",
        "KeyMarker": "a%3Fb",
        "NextKeyMarker": "c%23d",
        "Prefix": "p%25",
        "Delimiter": "%2F",
        "Uploads": [{"Key": "k%01", "UploadId": "id%20"}],
        "CommonPrefixes": [{"Prefix": "x%20y/"}],
    }
    decoded = decode_url_encoded_listing(response)
    assert (decoded["KeyMarker"], decoded["NextKeyMarker"], decoded["Prefix"], decoded["Delimiter"]) == (
        "a?b",
        "c#d",
        "p%",
        "/",
    )
    assert decoded["Uploads"] == [{"Key": "k\x01", "UploadId": "id%20"}]  # UploadIds are never encoded
    assert decoded["CommonPrefixes"] == [{"Prefix": "x y/"}]


class Pages:
    """A store answering ListMultipartUploads from a list of prepared pages, recording each request."""

    def __init__(self, pages: list[dict]) -> None:
        self.pages = pages
        self.calls: list[dict] = []

    def list_multipart_uploads(self, **kwargs):
        self.calls.append(kwargs)
        return self.pages[len(self.calls) - 1]


def test_a_page_without_next_markers_continues_after_its_last_upload():
    store = Pages(
        [
            {"Uploads": [{"Key": "k/1", "UploadId": "u1"}], "IsTruncated": True},
            {"Uploads": [{"Key": "k/2", "UploadId": "u2"}], "IsTruncated": False},
        ]
    )
    assert [u["UploadId"] for u in list_incomplete_uploads(store, BUCKET, "k/")] == ["u1", "u2"]
    assert (store.calls[1]["KeyMarker"], store.calls[1]["UploadIdMarker"]) == ("k/1", "u1")


@pytest.mark.parametrize(
    "second_page",
    [
        {"Uploads": [], "IsTruncated": True},  # "more", but nothing to continue from
        {"Uploads": [{"Key": "k/1", "UploadId": "u1"}], "IsTruncated": True},  # the same position again
    ],
)
def test_a_store_that_says_more_without_moving_on_is_refused_instead_of_looping(second_page):
    store = Pages([{"Uploads": [{"Key": "k/1", "UploadId": "u1"}], "IsTruncated": True}, second_page])
    with pytest.raises(S3UploadError, match="pagination is broken") as info:
        list(list_incomplete_uploads(store, BUCKET, "k/"))
    assert info.value.code == "BadPagination"
    assert len(store.calls) == 2


def test_no_prefix_lists_the_whole_bucket(mock_s3):
    ids = []
    for key in ("a", "b/c"):
        upload = MultipartUpload(mock_s3, BUCKET, key)
        ids.append(upload.create())
    try:
        assert sorted(u["UploadId"] for u in list_incomplete_uploads(mock_s3, BUCKET, "")) == sorted(ids)
        assert [u["Key"] for u in list_incomplete_uploads(mock_s3, BUCKET, "b/")] == ["b/c"]
    finally:
        for key, upload_id in zip(("a", "b/c"), ids, strict=True):
            MultipartUpload(mock_s3, BUCKET, key, upload_id=upload_id).abort()

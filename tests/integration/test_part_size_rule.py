"""The automatic part size changed (#22: at least ~64 parts down to 5 MiB): an upload an earlier try
recorded with other parts (the previous rule's 16 MiB) is resumed with them, not aborted and restarted."""

from __future__ import annotations

import pytest

from airflow_mpu_provider.multipart.errors import S3UploadError
from airflow_mpu_provider.multipart.parts.plan import plan_parts
from airflow_mpu_provider.operators.multipart_upload import STATE_KEY
from airflow_mpu_provider.version_compat import AIRFLOW_V_3_3_PLUS
from tests.conftest import MiB, incomplete_uploads, make_file, sha256_file, sha256_object
from tests.integration.conftest import BUCKET, FakeStateStore, FakeTaskInstance, upload_operator

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not AIRFLOW_V_3_3_PLUS, reason="task_state_store needs Airflow >= 3.3"),
]


def test_an_upload_recorded_with_the_previous_rules_part_size_is_resumed_with_it(connection, proxy, s3, tmp_path):
    path = make_file(tmp_path / "f", 40 * MiB)
    key = "rule/recorded-16mib.bin"
    assert plan_parts(40 * MiB).part_size == 5 * MiB  # the rule now; it was 16 MiB (3 parts)
    store = FakeStateStore()
    conn = connection(config_kwargs={"retries": {"mode": "standard", "max_attempts": 0}})
    proxy.fail_nth("UploadPart", 2)
    # The first try as the previous version ran it: 16 MiB parts, one at a time; part 2 fails.
    first = upload_operator(conn, path, key, part_size=16 * MiB, concurrency=1)
    with pytest.raises(S3UploadError):
        first.execute({"ti": FakeTaskInstance(try_number=1, max_tries=1), "task_state_store": store})
    recorded = store.get(STATE_KEY)
    assert recorded["part_size"] == 16 * MiB
    # The retry leaves part_size to the rule, as the DAG always did.
    retry = upload_operator(conn, path, key, part_size=None)
    result = retry.execute({"ti": FakeTaskInstance(try_number=2, max_tries=1), "task_state_store": store})
    assert result["upload_id"] == recorded["upload_id"] and result["parts_resumed"] == 1
    assert (result["part_size"], result["parts"]) == (16 * MiB, 3)
    assert sha256_object(s3, BUCKET, key) == sha256_file(path)
    assert incomplete_uploads(s3, BUCKET) == []


def test_a_new_upload_follows_the_new_rule(connection, proxy, s3, tmp_path):
    path = make_file(tmp_path / "f", 40 * MiB)
    result = upload_operator(connection(), path, "rule/new.bin", part_size=None).execute(
        {"ti": FakeTaskInstance(), "task_state_store": FakeStateStore()}
    )
    assert (result["part_size"], result["parts"]) == (5 * MiB, 8)

"""task_state_store as the engine's UploadLedger: one record per key, forgetting never fails a task."""

from __future__ import annotations

import logging

import pytest

from airflow_mpu_provider.multipart.ledger import forget
from airflow_mpu_provider.operators.retry_ledger import STATE_KEY, STREAM_STATE_KEY, RetryLedger, retry_ledger
from airflow_mpu_provider.version_compat import AIRFLOW_V_3_3_PLUS


class Store:
    """task_state_store's interface (get/set/delete by key)."""

    def __init__(self, *, fail_delete: bool = False) -> None:
        self.data: dict[str, object] = {}
        self.fail_delete = fail_delete

    def get(self, key):
        return self.data.get(key)

    def set(self, key, value):
        self.data[key] = value

    def delete(self, key):
        if self.fail_delete:
            raise ConnectionError("execution API answered 503")
        self.data.pop(key, None)


def test_the_file_and_the_stream_record_live_under_their_own_keys():
    store = Store()
    files, streams = RetryLedger(store, STATE_KEY, logging.getLogger()), RetryLedger(store, STREAM_STATE_KEY, None)
    files.set({"upload_id": "f"})
    streams.set({"upload_id": "s"})
    assert store.data == {STATE_KEY: {"upload_id": "f"}, STREAM_STATE_KEY: {"upload_id": "s"}}
    files.delete()
    assert (files.get(), streams.get()) == (None, {"upload_id": "s"})
    assert str(files) == "task_state_store"  # what the engine's log lines name


def test_a_record_that_is_not_a_dict_is_no_record():
    store = Store()
    store.data[STATE_KEY] = "garbage"
    assert RetryLedger(store, STATE_KEY, logging.getLogger()).get() is None


def test_a_failed_delete_is_logged_not_raised(caplog):
    store = Store(fail_delete=True)
    store.data[STATE_KEY] = {"upload_id": "u"}
    log = logging.getLogger("tests.ledger")
    with caplog.at_level(logging.WARNING):
        forget(RetryLedger(store, STATE_KEY, log), log)
    assert "Could not clear the record in task_state_store" in caplog.text


@pytest.mark.parametrize("with_store", [True, False])
def test_there_is_a_ledger_only_where_airflow_hands_out_task_state_store(with_store):
    context = {"task_state_store": Store()} if with_store else {}
    ledger = retry_ledger(context, STATE_KEY, logging.getLogger())
    assert (ledger is not None) is (with_store and AIRFLOW_V_3_3_PLUS)

"""The local test stores' own start-up: a port taken between its pick and the server's bind."""

from __future__ import annotations

import socket

from tests.support import local_airflow


def test_a_moto_port_taken_before_moto_binds_it_starts_moto_on_a_new_port(monkeypatch):
    """Another process (here: a socket of ours, listening) holds the port picked for moto: moto's bind
    fails, and the server is started again on a new port instead of the caller talking to the other."""
    taken = socket.create_server(("127.0.0.1", 0))
    taken_port = taken.getsockname()[1]
    picks: list[int] = []
    free_port = local_airflow.free_port

    def pick() -> int:
        picks.append(taken_port if not picks else free_port())
        return picks[-1]

    monkeypatch.setattr(local_airflow, "free_port", pick)
    with taken, local_airflow.moto_server_process() as endpoint:
        assert endpoint != f"http://127.0.0.1:{taken_port}"
        assert picks[0] == taken_port and len(picks) == 2
        client = local_airflow.s3_client(endpoint)
        client.create_bucket(Bucket="after-the-race")
        assert [b["Name"] for b in client.list_buckets()["Buckets"]] == ["after-the-race"]

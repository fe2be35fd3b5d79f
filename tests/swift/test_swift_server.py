"""The Swift fixture itself: a port it picked but another process took first does not fail the start."""

from __future__ import annotations

import socket

import pytest

from tests.support import swift_server

pytestmark = pytest.mark.swift


def test_a_port_taken_before_its_daemon_binds_it_restarts_swift_on_new_ports(tmp_path, monkeypatch):
    """The race of _free_port: another process binds the proxy's port between the pick and the proxy's
    own bind (here: a socket of ours, listening on it). Swift starts again on new ports and serves S3."""
    taken = socket.create_server(("127.0.0.1", 0))
    taken_port = taken.getsockname()[1]
    picks = []
    free_port = swift_server._free_port

    def pick() -> int:  # the 4th pick of the first start is the proxy's (account, container, object, proxy)
        picks.append(taken_port if len(picks) == 3 else free_port())
        return picks[-1]

    monkeypatch.setattr(swift_server, "_free_port", pick)
    with taken, swift_server.swift_server(tmp_path / "swift") as server:
        assert server.endpoint != f"http://127.0.0.1:{taken_port}"
        assert (tmp_path / "swift" / "start-2").is_dir()  # the first start was abandoned, the second serves
        assert picks.count(taken_port) == 1
        client = swift_server.s3_client(server.endpoint)
        client.create_bucket(Bucket="after-the-race")
        assert "after-the-race" in [b["Name"] for b in client.list_buckets()["Buckets"]]
        # The abandoned start left nothing running: only the second start's daemons are alive.
        assert all(p.poll() is None for p in server.processes.values())
    assert all(p.poll() is not None for p in server.processes.values())

"""S3MultipartHook: the amazon provider's S3Hook, plus what large multipart uploads need.

Built on ``S3Hook`` so that every connection extra users know (credentials, ``role_arn``,
``region_name``, ``endpoint_url``, ``config_kwargs``, ``verify``) keeps working, and usable wherever a
hook is: operators, ``@task`` functions, callbacks, scripts. It is the one place that builds the
clients the engine needs, tuned for many parallel parts, and it owns the S3 work the operators would
otherwise do themselves.

    from airflow_mpu_provider.hooks.multipart import S3MultipartHook

    hook = S3MultipartHook(aws_conn_id="aws_default")
    report = hook.abort_stale_uploads("backups", "postgres/", older_than=timedelta(days=2))
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from botocore.config import Config

from airflow_mpu_provider.multipart.engine import DEFAULT_CONCURRENCY
from airflow_mpu_provider.multipart.integrity import DEFAULT_CHECKSUM_ALGORITHM
from airflow_mpu_provider.multipart.stale import DEFAULT_OLDER_THAN, StaleUploadSweep

#: Seconds the abort started by a cancel waits on the network: it races a kill's grace period, and the
#: upload's own thread aborts again through the main client once its parts have stopped.
ABORT_TIMEOUT = 5
#: Retries per request in the main client (botocore's ``max_attempts``: 11 attempts in all): a long upload
#: must ride out a flaky network; standard mode backs off exponentially and spends a shared retry quota,
#: so a dead endpoint still fails in minutes.
UPLOAD_RETRIES = 10


class S3MultipartHook(S3Hook):
    """S3Hook with the tuned clients, cancellation and housekeeping of resumable multipart uploads.

    :param aws_conn_id: the Airflow AWS connection, exactly as for S3Hook.
    :param verify: SSL verification as in S3Hook (False, or a CA bundle path).
    """

    hook_name = "Amazon S3 (multipart upload)"

    def __init__(self, aws_conn_id: str | None = "aws_default", verify: bool | str | None = None, **kwargs: Any):
        super().__init__(aws_conn_id=aws_conn_id, verify=verify, **kwargs)
        self._cancelled = threading.Event()
        self._sweeps: list[StaleUploadSweep] = []

    # -- clients ----------------------------------------------------------------------------------

    def get_upload_client(
        self, *, workers: int = DEFAULT_CONCURRENCY, checksum_algorithm: str | None = DEFAULT_CHECKSUM_ALGORITHM
    ) -> Any:
        """A client for ``workers`` parallel parts: its own pool, standard retries, TCP keep-alive.

        These defaults sit *under* the connection's ``config_kwargs``, which win; only a pool too small
        for the workers is raised, since parts waiting for a connection would stall the upload.
        ``checksum_algorithm=None`` (stores that reject S3 checksums) also turns off the checksums
        botocore >= 1.36 adds by default.
        """
        config = Config(
            max_pool_connections=workers + 4,
            retries={"mode": "standard", "max_attempts": UPLOAD_RETRIES},
            tcp_keepalive=True,
        ).merge(self.config)
        if (config.max_pool_connections or 10) < workers + 1:
            config = config.merge(Config(max_pool_connections=workers + 4))
        if checksum_algorithm is None:
            config = config.merge(
                Config(request_checksum_calculation="when_required", response_checksum_validation="when_required")
            )
        return self.get_client_type(config=config)

    def get_abort_client(self) -> Any:
        """A second client from the same connection, for the abort a cancel starts in a thread.

        Its own connection pool means it never waits on the connections the parts hold (a signal
        handler must not block on them), and it gives up quickly: the upload aborts again through
        the main client once its parts have stopped.
        """
        quick = Config(
            connect_timeout=ABORT_TIMEOUT,
            read_timeout=ABORT_TIMEOUT,
            retries={"mode": "standard", "total_max_attempts": 2},
        )
        return self.get_client_type(config=self.config.merge(quick))

    # -- cancellation -----------------------------------------------------------------------------

    def cancel(self) -> None:
        """Stop what this hook is running, from any thread (a signal handler, a callback)."""
        self._cancelled.set()
        for sweep in self._sweeps:
            sweep.cancel()

    # -- housekeeping -----------------------------------------------------------------------------

    def abort_stale_uploads(
        self,
        bucket: str,
        prefix: str = "",
        older_than: timedelta = DEFAULT_OLDER_THAN,
        *,
        dry_run: bool = False,
        request_args: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Abort the incomplete multipart uploads under ``prefix`` initiated more than ``older_than`` ago.

        Returns the report (count, bytes their parts held, the oldest age, each upload); raises
        ``StaleUploadCleanupError`` at the end if some could not be aborted (the others were).
        ``request_args``: ``RequestPayer``/``ExpectedBucketOwner``, sent with every call.
        """
        sweep = StaleUploadSweep(
            self.get_conn(),
            bucket,
            prefix,
            older_than=older_than,
            dry_run=dry_run,
            request_args=request_args,
            log=self.log,
        )
        self._sweeps.append(sweep)
        if self._cancelled.is_set():
            sweep.cancel()
        try:
            return sweep.run()
        finally:
            self._sweeps.remove(sweep)

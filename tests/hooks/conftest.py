"""The hook's HTTP tests use the integration harness: moto's server behind the counting proxy, reached
through an Airflow connection (``connection``), and the session's bucket (``it_bucket``)."""

from tests.integration.conftest import connection, it_bucket  # noqa: F401 (fixtures, registered by import)

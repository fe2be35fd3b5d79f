"""airflow-mpu-provider: resumable, verified S3 multipart uploads of very large files from Airflow.

Importing this package makes no network calls and does not import Airflow (the engine in
``airflow_mpu_provider.multipart`` is usable without it).
"""

from __future__ import annotations

__version__ = "0.1.0"


def _documentation_url() -> str | None:
    """The "Documentation" Project-URL of the installed distribution, so that pyproject.toml stays the
    one place naming it. Later Airflow releases (3.1.8, 3.3) read it from the metadata themselves and
    override this; earlier ones (3.1.3 checked) show only what ``get_provider_info`` returns."""
    from importlib.metadata import PackageNotFoundError, metadata

    try:
        urls = metadata("airflow-mpu-provider").get_all("Project-URL") or []
    except PackageNotFoundError:  # imported from a source tree that was never installed
        return None
    for entry in urls:
        name, _, url = entry.partition(",")
        if name.strip().lower() == "documentation":
            return url.strip()
    return None


def get_provider_info() -> dict:
    """What ``airflow providers list`` shows; registered via the ``apache_airflow_provider`` entry point."""
    return {
        "package-name": "airflow-mpu-provider",
        "name": "S3 Multipart Upload",
        "description": "Resumable, verified S3 multipart uploads of very large files (database dumps, logs).",
        "versions": [__version__],
        "documentation-url": _documentation_url(),
        "integrations": [
            {
                "integration-name": "Amazon Simple Storage Service (S3) multipart upload",
                "external-doc-url": "https://docs.aws.amazon.com/AmazonS3/latest/userguide/mpuoverview.html",
                "tags": ["aws"],
            }
        ],
        "operators": [
            {
                "integration-name": "Amazon Simple Storage Service (S3) multipart upload",
                "python-modules": [
                    "airflow_mpu_provider.operators.multipart_upload",
                    "airflow_mpu_provider.operators.cleanup",
                ],
            }
        ],
        "hooks": [
            {
                "integration-name": "Amazon Simple Storage Service (S3) multipart upload",
                "python-modules": ["airflow_mpu_provider.hooks.multipart"],
            }
        ],
    }

"""airflow-mpu-provider: resumable, verified S3 multipart uploads of very large files from Airflow.

Importing this package makes no network calls and does not import Airflow (the engine in
``airflow_mpu_provider.multipart`` is usable without it).
"""

from __future__ import annotations

__version__ = "0.1.0"


def get_provider_info() -> dict:
    """What ``airflow providers list`` shows; registered via the ``apache_airflow_provider`` entry point."""
    return {
        "package-name": "airflow-mpu-provider",
        "name": "S3 Multipart Upload",
        "description": "Resumable, verified S3 multipart uploads of very large files (database dumps, logs).",
        "versions": [__version__],
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
    }

"""How UploadPart requests are signed: the body is SHA-256-hashed only when nothing else binds it.

SigV4 signs a request's headers; whether it also hashes the body (``x-amz-content-sha256``) is
botocore's choice: over HTTPS it sends ``UNSIGNED-PAYLOAD`` when the request carries a checksum
header, over plain HTTP it always hashes. Every part the engine sends already carries a digest the
store verifies on receipt, so hashing the body a second time with SHA-256 costs CPU (~2 s/GiB
here) and proves nothing more, as long as that digest is signed and cannot be forged:

* ``Content-MD5``, ``x-amz-checksum-sha256`` and ``x-amz-checksum-sha1`` bind the body: the header is
  signed, the store rejects a body that does not match it (BadDigest), and nobody on the path can make
  another body of the same length with the same digest (a second preimage).
* The CRC checksums (``x-amz-checksum-crc32``/``crc32c``/``crc64nvme``) do not: CRCs are linear, so
  anyone who can rewrite a plain-HTTP request can append a few bytes that restore the CRC. Over plain
  HTTP a part that carries only a CRC (a store that echoes checksums, after its first part) keeps its
  SHA-256 payload signature, as botocore decides. The engine avoids that case: over plain HTTP every part
  carries a Content-MD5 (``md5_spares_the_payload_hash``), cheaper than the signer's pass over the body.

Over HTTPS botocore's rule (TLS plus any checksum is enough) is unchanged; we only tell its signer
which header holds a checksum we computed ourselves, which it does not look for by itself.
"""

from __future__ import annotations

from typing import Any

from botocore.config import Config

#: Signed headers whose value is a cryptographic digest of the body (lower case).
BINDING_DIGEST_HEADERS = frozenset({"content-md5", "x-amz-checksum-sha256", "x-amz-checksum-sha1"})


def sign_payload_only_when_needed(client: Any) -> None:
    """Let botocore skip the SHA-256 of an UploadPart body wherever a signed digest already binds it.

    Over HTTPS: declares our precomputed ``x-amz-checksum-*`` header to botocore's S3 signer, which
    then skips payload signing as it does for checksums it computes itself. Over plain HTTP: when the
    part carries a signed cryptographic digest (see ``BINDING_DIGEST_HEADERS``), the signer gets this
    request's client configuration with ``s3.payload_signing_enabled=False`` (the one switch both
    botocore's Python and awscrt signers read before their HTTPS rule), so the body is sent as
    ``UNSIGNED-PAYLOAD``. A ``payload_signing_enabled`` the user set on the client is always obeyed.
    Idempotent: registering twice on the same client keeps one handler.
    """
    unsigned_config: list[Config] = []  # built once per client, on first use

    def without_payload_signing(config: Config) -> Config:
        if not unsigned_config:
            s3 = dict(getattr(config, "s3", None) or {})
            s3["payload_signing_enabled"] = False
            unsigned_config.append(config.merge(Config(s3=s3)))
        return unsigned_config[0]

    def sign_only_what_needs_it(request: Any, **_: Any) -> None:
        names = {header.lower(): header for header in request.headers}
        _declare_checksum_header(request, names)
        if not _plain_http(request.url):
            return
        config = request.context.get("client_config")
        if config is None or _user_set_payload_signing(config):
            return  # no config to adjust, or the user decided: botocore follows the user
        if BINDING_DIGEST_HEADERS.intersection(names):
            request.context["client_config"] = without_payload_signing(config)

    client.meta.events.register(
        "before-sign.s3.UploadPart", sign_only_what_needs_it, unique_id="airflow-mpu-checksum-header"
    )


def md5_spares_the_payload_hash(client: Any) -> bool:
    """Whether every part should carry a Content-MD5, echoed checksums or not: over plain HTTP, where a part
    bound by a CRC alone is SHA-256-signed, and the signer reads a file part's body through a Python
    callback a few KiB at a time (3.4 s/GiB of client CPU on loopback, against 1.4 s/GiB for the MD5 the
    digest pass computes a MiB at a time). Not when the user set ``payload_signing_enabled``: botocore then
    signs or skips as told, and an MD5 would spare nothing."""
    meta = getattr(client, "meta", None)
    return _plain_http(getattr(meta, "endpoint_url", None)) and not _user_set_payload_signing(
        getattr(meta, "config", None)
    )


def _plain_http(url: Any) -> bool:
    return str(url or "").lower().startswith("http://")


def _user_set_payload_signing(config: Any) -> bool:
    """Whether the client's configuration says whether to sign payloads: botocore then follows the user."""
    return (getattr(config, "s3", None) or {}).get("payload_signing_enabled") is not None


def _declare_checksum_header(request: Any, names: dict[str, str]) -> None:
    """Tell botocore's S3 signer which header holds our precomputed checksum (it looks at its own only)."""
    for name, header in names.items():
        if name.startswith("x-amz-checksum-") and name != "x-amz-checksum-algorithm":
            checksum = request.context.setdefault("checksum", {})
            checksum.setdefault(
                "request_algorithm", {"algorithm": name[len("x-amz-checksum-") :], "in": "header", "name": header}
            )
            return

"""CompleteMultipartUpload and the proof that the object it made is the source: the engine's last step.

What Complete is sent follows what the store has shown it understands (``MultipartUpload.store_knows_checksums``):
the parts' checksums and the whole-file CRC only where an answer of the store named a checksum; a store
that shows none (OpenStack Swift's s3api) gets PartNumber and ETag, the only fields its schema allows. A
store that refuses what it was sent anyway is completed once more without it, with a warning; nothing
is given up for good that the store did store: the object is then verified by what the store does
verify (the MD5 ETag of every part), and no checksum the store did not keep is ever reported.

The object is judged by the ETag and version Complete returned (HeadObject with ``IfMatch``), not by
whatever the key holds a moment later: another object there is a race, reported as one, with advice that
never overwrites the newer object.
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from airflow_mpu_provider.multipart.checksums.compare import NOT_FOUND_CODES, ObjectComparison
from airflow_mpu_provider.multipart.checksums.digests import checksum_field, multipart_etag
from airflow_mpu_provider.multipart.checksums.verify import (
    Expected,
    Verdict,
    expected_from_parts,
    identify,
    judge,
    quoted,
    store_defect_hint,
)
from airflow_mpu_provider.multipart.checksums.whole_file import (
    COMPOSITE,
    FULL_OBJECT,
    FULL_OBJECT_ALGORITHMS,
    complete_refuses_checksums,
    complete_refuses_type,
    complete_wants_checksums,
    describe_whole_file,
    full_object_checksum,
    reported_checksum,
)
from airflow_mpu_provider.multipart.errors import (
    IntegrityError,
    S3UploadError,
    is_busy_store_refusal,
    is_precondition_failure,
)
from airflow_mpu_provider.multipart.parts.record import PartRecord
from airflow_mpu_provider.multipart.units import format_bytes
from airflow_mpu_provider.multipart.upload import MultipartUpload

#: HeadObject errors of a store that does not take IfMatch there (the ETags are then compared by hand).
_NO_IF_MATCH = frozenset({"NotImplemented", "501", "InvalidArgument", "InvalidRequest", "400"})
#: Pauses before sending Complete again to a store whose backend was busy (seconds; then the error stands).
BUSY_PAUSES = (1.0, 2.0, 4.0, 8.0)
#: Checksum algorithms by the length of their raw value: what a reported value of that length may be.
_BY_LENGTH = {4: ("CRC32C", "CRC32"), 8: ("CRC64NVME",), 20: ("SHA1",), 32: ("SHA256",)}


@dataclass
class _CompleteAsk:
    """What the next CompleteMultipartUpload carries, and which fallbacks were used (each at most once)."""

    conditions: dict[str, Any]
    part_checksums: bool
    whole: str | None
    refused: bool = False
    asked_again: bool = False
    busy: int = 0  # times the store's backend was busy (a 400 carrying a 503), each followed by a pause


@dataclass
class _Local:
    """The source's parts read again: MD5s (None: not needed) and other algorithms' (checksum, size)s."""

    md5s: list[bytes] | None
    alternatives: dict[str, list[tuple[str, int]]] = field(default_factory=dict)


class CompleteAndVerify:
    """The engine's Complete/verify step; mixed into ``BaseUploadEngine`` (which provides the attributes)."""

    upload: MultipartUpload | None
    bucket: str
    key: str
    description: str
    log: logging.Logger
    options: Any
    checksum_type: str | None
    _object_checksum: tuple[str | None, str | None]
    _stop: threading.Event

    # -- provided by the engine ------------------------------------------------------------------

    def _head(self, version_id: str | None = None, *, with_checksum: bool = False, if_match: str | None = None) -> Any:
        raise NotImplementedError

    def _compare_with_source(self) -> ObjectComparison | None:
        raise NotImplementedError

    def _reread(self, parts: Sequence[PartRecord], algorithms: Sequence[str], with_md5: bool) -> _Local | None:
        """The parts of the source read again (None: the source cannot be read again, e.g. a stream)."""
        return None

    # -- completing ----------------------------------------------------------------------------

    def _combined_crc(self, parts: list[PartRecord]) -> str | None:
        """The whole-file CRC combined from the parts' CRCs and sizes, or None where there is none (SHA
        algorithms, parts without checksums)."""
        algorithm = self.options.checksum_algorithm
        if algorithm not in FULL_OBJECT_ALGORITHMS or not all(p.checksum for p in parts):
            return None
        return full_object_checksum(algorithm, [(p.checksum, p.size) for p in parts if p.checksum])

    def _complete(self, parts: list[PartRecord], expected_size: int) -> dict[str, Any]:
        """CompleteMultipartUpload, then prove that the object it made is the source (see the module doc)."""
        assert self.upload is not None
        whole = self._combined_crc(parts) if self.checksum_type == FULL_OBJECT else None
        self._whole_sent = False
        response, verify = self._complete_or_recover(parts, expected_size, whole)
        if not verify:
            return response
        head = self._head_of_completed(response, parts)
        self.upload.note_encryption(response)
        if head is not None:
            self.upload.note_encryption(head)
        expected = self._expected(parts, expected_size)
        verdict = judge(expected, response, head)
        if verdict.checksum_problem or (not verdict.proved and expected.etag is None):
            self._settle(verdict, expected, parts, response)
        self._conclude(verdict, expected, response, head, whole)
        return response

    def _expected(self, parts: list[PartRecord], size: int) -> Expected:
        assert self.upload is not None
        return expected_from_parts(
            parts,
            size,
            self.options.checksum_algorithm,
            etags_are_md5=self.upload.etags_are_md5,
            full_object_asked=self._whole_sent,
        )

    def _complete_or_recover(
        self, parts: list[PartRecord], size: int, whole: str | None
    ) -> tuple[dict[str, Any], bool]:
        """Complete's answer and whether it is still to be verified; the recoveries of a refused Complete:
        an object appeared (replace=False), a racing conditional write (409), a lost answer (NoSuchUpload)."""
        try:
            return self._complete_call(parts, whole), True
        except S3UploadError as e:
            if is_precondition_failure(e):
                return self._object_appeared(e), False
            if e.code == "ConditionalRequestConflict":
                return self._after_conflict(parts, whole, e)
            if e.code != "NoSuchUpload":
                raise
            return self._lost_answer(parts, size, e), True

    def _lost_answer(self, parts: list[PartRecord], size: int, error: S3UploadError) -> dict[str, Any]:
        """A retried Complete whose first attempt succeeded gets NoSuchUpload: the object, if it is ours."""
        try:
            head = self._head(with_checksum=True)
        except S3UploadError:
            raise error from None
        verdict = judge(self._expected(parts, size), head, head)
        if verdict.problems or verdict.checksum_problem or not verdict.proved:
            raise error
        algorithm = self.options.checksum_algorithm
        proof = {COMPOSITE: f"{algorithm} composite checksum", FULL_OBJECT: f"{algorithm} full-object checksum"}
        self.log.warning(
            "CompleteMultipartUpload answered NoSuchUpload, but the object is complete and matches (size and %s): "
            "an earlier attempt of the call succeeded and its answer was lost.",
            proof.get(verdict.checksum_type or "", "ETag"),
        )
        return head

    def _after_conflict(
        self, parts: list[PartRecord], whole: str | None, error: S3UploadError
    ) -> tuple[dict[str, Any], bool]:
        """409 ConditionalRequestConflict: another conditional write to the key ran at the same moment.
        Complete is tried once more, and S3 decides: the other write landed (412: compared with the
        source, never replaced), or it did not (completed)."""
        assert self.upload is not None
        self.log.warning(
            "CompleteMultipartUpload of s3://%s/%s met a conflicting conditional write to the same key "
            "(409 ConditionalRequestConflict); trying once more, still on the condition that the key is free.",
            self.bucket,
            self.key,
        )
        try:
            return self._complete_call(parts, whole), True
        except S3UploadError as again:
            if is_precondition_failure(again):
                return self._object_appeared(again), False
            raise S3UploadError(
                f"CompleteMultipartUpload of s3://{self.bucket}/{self.key} (UploadId {self.upload.upload_id}) met a "
                f"conflicting conditional write to the same key (409 ConditionalRequestConflict), and trying once "
                f"more failed too ({again.code}): another run is writing this key at the same moment. Nothing was "
                "overwritten. Make sure one task owns this key; a retry first checks the key and never replaces "
                "another object (replace=False).",
                code="ConditionalRequestConflict",
                operation="CompleteMultipartUpload",
                bucket=self.bucket,
                key=self.key,
                upload_id=self.upload.upload_id,
                status=again.status,
            ) from error

    def _complete_call(self, parts: list[PartRecord], whole: str | None = None) -> dict[str, Any]:
        """CompleteMultipartUpload with what the store has shown it understands, falling back once for
        each thing it refuses anyway: the whole-file checksum, the parts' checksums, the condition."""
        assert self.upload is not None
        knows = self.upload.store_knows_checksums
        ask = _CompleteAsk(
            conditions={} if self.options.overwrite else {"IfNoneMatch": "*"},
            part_checksums=knows,
            whole=whole if knows else None,
        )
        if not knows and self.options.checksum_algorithm:
            self.log.info(
                "The store showed no support for S3 checksums (no %s echoed by UploadPart, none named by "
                "CreateMultipartUpload or ListParts): completing s3://%s/%s with PartNumber and ETag only; the "
                "object is verified by what the store does verify (its ETag, the MD5 of every part).",
                self.options.checksum_algorithm,
                self.bucket,
                self.key,
            )
        while True:
            self._whole_sent = ask.whole is not None
            algorithm = self.options.checksum_algorithm
            extra = {"ChecksumType": FULL_OBJECT, checksum_field(algorithm): ask.whole} if ask.whole else {}
            try:
                return self.upload.complete(parts, with_checksums=ask.part_checksums, **ask.conditions, **extra)
            except S3UploadError as e:
                busy = is_busy_store_refusal(e)  # not about what Complete carried: sent again as it was
                if not (self._pause_for_busy_store(ask, e) if busy else self._fall_back(ask, parts, e)):
                    raise

    def _pause_for_busy_store(self, ask: _CompleteAsk, error: S3UploadError) -> bool:
        """A store whose backend was busy refused Complete with a 400 (no retry mode retries it): wait, then
        True to send it again; False once the pauses are used up or the upload is stopped."""
        if ask.busy >= len(BUSY_PAUSES):
            return False
        pause = BUSY_PAUSES[ask.busy]
        ask.busy += 1
        self.log.warning(
            "CompleteMultipartUpload of s3://%s/%s was refused because the store's backend was busy (%s: %s); "
            "sending it again in %g s (%d of %d).",
            self.bucket,
            self.key,
            error.code,
            error.reason or error,
            pause,
            ask.busy,
            len(BUSY_PAUSES),
        )
        return not self._stop.wait(pause)

    def _fall_back(self, ask: _CompleteAsk, parts: list[PartRecord], error: S3UploadError) -> bool:
        """Change ``ask`` for the store that refused it (True), or leave it (False: the error stands)."""
        message = str(error)
        if ask.whole and not is_precondition_failure(error) and complete_refuses_type(error.code, message):
            self._fall_back_to_composite("CompleteMultipartUpload", error)
            ask.whole = None
            return True
        if ask.part_checksums and not ask.refused and complete_refuses_checksums(error.code, message):
            ask.part_checksums, ask.whole, ask.refused = False, None, True
            self.log.warning(
                "The store refused the checksums sent with CompleteMultipartUpload of s3://%s/%s (%s: %s); "
                "completing again with each part's PartNumber and ETag only, which every store accepts. The "
                "object is verified by what the store does verify (the parts' MD5 ETags), and no checksum the "
                "store did not keep is reported.",
                self.bucket,
                self.key,
                error.code,
                error.reason or error,
            )
            return True
        wanted = not (ask.part_checksums or ask.refused or ask.asked_again) and all(p.checksum for p in parts)
        if wanted and complete_wants_checksums(error.code, message):
            ask.part_checksums = ask.asked_again = True
            self.log.warning("The store wants the parts' checksums at Complete (%s): sending them.", error)
            return True
        not_implemented = error.code in ("NotImplemented", "501") or error.status == 501
        if ask.conditions and not_implemented and not is_precondition_failure(error):
            self.log.warning(
                "The store does not support a conditional CompleteMultipartUpload (%s); completing without it. "
                "An object another run wrote to s3://%s/%s since the upload started would be replaced.",
                error.code,
                self.bucket,
                self.key,
            )
            ask.conditions = {}
            return True
        return False

    def _fall_back_to_composite(self, operation: str, error: S3UploadError) -> None:
        """The store refused the full-object checksum: go on without it, and say so once."""
        self.checksum_type = COMPOSITE
        if operation == "CreateMultipartUpload":
            outcome = "the upload was created without it and gets a COMPOSITE checksum (of the part checksums)"
        else:
            outcome = (
                "the upload was completed without it; the object's checksum is the one the store computes "
                "(COMPOSITE where full-object checksums are not supported)"
            )
        self.log.warning(
            "The store refused a full-object (FULL_OBJECT) %s checksum at %s (%s: %s): %s, which a restore cannot "
            "check with a plain CRC tool. s3://%s/%s is still verified. Set checksum_type='COMPOSITE' for this "
            "store to skip the attempt.",
            self.options.checksum_algorithm,
            operation,
            error.code,
            error.reason or error,
            outcome,
            self.bucket,
            self.key,
        )

    # -- verifying -----------------------------------------------------------------------------

    def _head_of_completed(self, response: dict[str, Any], parts: list[PartRecord]) -> dict[str, Any] | None:
        """HeadObject of the object Complete made (its version, and IfMatch its ETag), or None when the key
        already holds another object (a race: someone completed or wrote it after us)."""
        algorithm = self.options.checksum_algorithm
        etag = quoted(response.get("ETag"))
        version = response.get("VersionId")
        with_checksum = bool(algorithm) and all(p.checksum for p in parts)
        with_checksum = with_checksum and reported_checksum(response, algorithm)[0] is None
        try:
            try:
                head = self._head(version, with_checksum=with_checksum, if_match=etag)
            except S3UploadError as e:
                if is_precondition_failure(e) or (e.code not in _NO_IF_MATCH and e.status not in (400, 501)):
                    raise
                head = self._head(version, with_checksum=with_checksum)  # compared by hand below
        except S3UploadError as e:
            if not (is_precondition_failure(e) or e.code in NOT_FOUND_CODES):
                raise
            self._race = f"HeadObject IfMatch {etag} answered {e.code}"
            return None
        if etag and quoted(head.get("ETag")) != etag and not version:  # a store that ignores IfMatch
            self._race = f"the key now holds ETag {head.get('ETag')}"
            return None
        self._race = None
        return head

    def _settle(self, verdict: Verdict, expected: Expected, parts: list[PartRecord], response: dict[str, Any]) -> None:
        """Where the answers left the object unproved, or its checksum unexplained: read the source again
        (if it can be) for the parts' MD5s and other algorithms' checksums, and judge by what that proves."""
        assert self.upload is not None
        with_md5 = expected.etag is None and self.upload.etags_are_md5
        algorithms: list[str] = []
        if verdict.checksum_problem and verdict.reported:
            length = _raw_length(verdict.reported)
            algorithms = [a for a in _BY_LENGTH.get(length, ()) if a != expected.algorithm]
        if not with_md5 and not algorithms:
            return
        local = self._reread(parts, algorithms, with_md5)
        if local is None:
            return
        if local.md5s is not None:
            etag = multipart_etag(local.md5s)
            if response.get("ETag") == etag:
                verdict.verified.append("ETag (the parts' MD5s, read again from the source)")
            else:
                verdict.problems.append(f"ETag is {response.get('ETag')}, expected {etag} from the parts' MD5s")
        if verdict.checksum_problem and verdict.reported:
            self._explain_checksum(verdict, expected, local)

    def _explain_checksum(self, verdict: Verdict, expected: Expected, local: _Local) -> None:
        """A checksum that is not the file's: another algorithm's value of the file (the store's defect), or,
        with the object proved by its ETag, a value the store computes some other way; else it stands."""
        assert verdict.reported is not None and expected.algorithm is not None
        algorithm, value = expected.algorithm, verdict.reported
        found = identify(value, algorithm, local.alternatives)
        if found is not None:
            other, form = found
            verdict.verified.append(f"{other} {form} checksum (reported under the {algorithm} label)")
            verdict.notes.append(
                f"the store reports as {algorithm} the file's {form} {other} checksum ({value}): it computes "
                f"{other} under the {algorithm} label, a defect of the store, not of the object; "
                f"{store_defect_hint(algorithm, other)}. No {algorithm} checksum is reported for the object"
            )
        elif verdict.proved and not verdict.problems:
            verdict.notes.append(
                f"the store's {algorithm} checksum is not the file's ({verdict.checksum_problem}), but the object's "
                f"ETag proves every part's bytes, so the store computes this checksum some other way; it is not "
                "reported"
            )
        else:
            return
        verdict.checksum_problem = None
        verdict.checksum = verdict.checksum_type = None

    def _conclude(
        self,
        verdict: Verdict,
        expected: Expected,
        response: dict[str, Any],
        head: dict[str, Any] | None,
        whole: str | None,
    ) -> None:
        """Raise for a corrupt or raced object; else log what proved it, and keep its checksum for the result."""
        assert self.upload is not None
        problems = [*verdict.problems, *([verdict.checksum_problem] if verdict.checksum_problem else [])]
        if problems:
            raise IntegrityError(self._corrupt_message(problems, verdict, head))
        if head is None:
            self._raced(verdict, response)
        for note in verdict.notes:
            self.log.warning("s3://%s/%s: %s.", self.bucket, self.key, note)
        self._object_checksum = (verdict.checksum, verdict.checksum_type)
        self.log.info(
            "Completed s3://%s/%s: %s, ETag %s; verified %s.",
            self.bucket,
            self.key,
            format_bytes(expected.size),
            response.get("ETag"),
            ", ".join(verdict.verified) or "nothing",
        )
        self._log_whole_file(whole, verdict)
        if not verdict.proved:
            if not self.upload.etags_are_md5:
                why = "its ETag is not an MD5 under SSE-KMS/SSE-C"
            elif expected.etag is None:
                why = "the ETag cannot be predicted: parts sent after the store's first checksum echo carry no MD5"
            else:
                why = "no MD5 ETag"
            self.log.warning(
                "s3://%s/%s: only the size could be verified; nothing else verifies the object (%s, and no %s object "
                "checksum in the store's answer).",
                self.bucket,
                self.key,
                why,
                self.options.checksum_algorithm or "S3",
            )

    def _corrupt_message(self, problems: list[str], verdict: Verdict, head: dict[str, Any] | None) -> str:
        assert self.upload is not None
        maybe = ""
        if verdict.checksum_problem and not verdict.problems:
            algorithm = self.options.checksum_algorithm
            other = "CRC32" if algorithm == "CRC32C" else "another algorithm"
            maybe = (
                f" Nothing else could prove the object's bytes (a stream cannot be read again; its ETag is no MD5 "
                f"here or its parts' MD5s are unknown): unless the store computes {algorithm} wrongly (moto without "
                f"the crc32c package reports {other} as CRC32C; install crc32c where moto runs)."
            )
        return (
            f"s3://{self.bucket}/{self.key} (UploadId {self.upload.upload_id}) does not match "
            f"{self.description}: {'; '.join(problems)}. The object is corrupt: do not use it; re-run the task "
            f"with replace=True.{maybe}"
        )

    def _raced(self, verdict: Verdict, response: dict[str, Any]) -> None:
        """The key holds another object than the one Complete made: someone completed or wrote it after us."""
        assert self.upload is not None
        what = (
            f"Another writer replaced s3://{self.bucket}/{self.key} after this upload completed it ({self._race}; "
            f"Complete returned ETag {response.get('ETag')})"
        )
        advice = (
            "This task did not overwrite that newer object and must not: find out which writer should own the key "
            "before uploading again (re-running with replace=True would put this older file over the newer one)."
        )
        if not verdict.proved:
            raise S3UploadError(
                f"{what}, so the object this upload made cannot be verified any more; it was not found corrupt. "
                + advice,
                code="ObjectReplaced",
                operation="HeadObject",
                bucket=self.bucket,
                key=self.key,
                upload_id=self.upload.upload_id,
            )
        self.log.warning(
            "%s. The object this upload made was verified by Complete's answer (%s). %s",
            what,
            ", ".join(verdict.verified),
            advice,
        )

    def _log_whole_file(self, whole: str | None, verdict: Verdict) -> None:
        algorithm = self.options.checksum_algorithm
        if whole is None or not algorithm:
            return
        if verdict.checksum_type == FULL_OBJECT:
            self.log.info("%s", describe_whole_file(algorithm, whole))
        else:
            self.log.info(
                "%s (computed locally from the parts; not confirmed by the store, and not reported as the object's)",
                describe_whole_file(algorithm, whole),
            )

    def _object_appeared(self, error: S3UploadError) -> dict[str, Any]:
        """Complete was refused because an object appeared at the key meanwhile (overwrite=False; HTTP 412,
        whatever code the store gives it).

        If it is exactly our source (another run uploaded the same bytes, or our own earlier attempt
        of this Complete succeeded), the work is done: our upload is aborted and the object's answer
        returned. Otherwise it is never replaced: ObjectExists (and the upload is aborted as ours).
        """
        assert self.upload is not None
        comparison = self._compare_with_source()
        if comparison is None or not comparison.matches:
            why = comparison.detail if comparison is not None else "a stream cannot be compared with it"
            raise S3UploadError(
                f"s3://{self.bucket}/{self.key} was written by someone else while this upload ran, and it is not "
                f"{self.description} ({why}); it was not replaced. Set replace=True to overwrite it, or use "
                "another key.",
                code="ObjectExists",
                operation="CompleteMultipartUpload",
                bucket=self.bucket,
                key=self.key,
                upload_id=self.upload.upload_id,
            ) from error
        self.log.info(
            "s3://%s/%s appeared while this upload ran and already holds exactly %s (%s): nothing to replace; "
            "aborting upload %s.",
            self.bucket,
            self.key,
            self.description,
            comparison.detail,
            self.upload.upload_id,
        )
        self.upload.abort()
        algorithm = self.options.checksum_algorithm
        if algorithm and "checksum" in comparison.detail:
            self._object_checksum = reported_checksum(comparison.head, algorithm)
        return comparison.head


def _raw_length(value: str) -> int:
    """Bytes of a base64 checksum value (its "-N" left out), 0 if it is not base64."""
    try:
        return len(base64.b64decode(value.split("-")[0], validate=True))
    except (binascii.Error, ValueError):
        return 0

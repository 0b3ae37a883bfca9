"""Every typed failure lift3d knows, each with a stable machine ``code``.

This is the one error vocabulary of the project: models, the pipeline, storage and
the server raise these. Nothing here knows about HTTP; the server maps each class to
a status once, at the edge (``server/problems.py``), as TGI does.
"""

from __future__ import annotations


class Lift3dError(Exception):
    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


# -- the client's input ----------------------------------------------------------


class InputError(Lift3dError):
    """The client's input is wrong: a 4xx, never a 5xx."""

    code = "invalid_input"


class BadRequest(InputError):
    """The request itself is malformed (framing, headers), before any image is looked at."""

    code = "bad_request"


class IncompleteMultipart(BadRequest):
    """A multipart body that ends without its closing boundary: it may have been cut short."""

    code = "incomplete_multipart"


class RequestTimeout(BadRequest):
    """The request body stopped arriving, or took longer than the body timeout (408)."""

    code = "request_timeout"


class EmptyImage(InputError):
    code = "empty_image"


class MissingImage(InputError):
    code = "missing_image"


class UnsupportedFormat(InputError):
    code = "unsupported_media_type"


class UndecodableImage(InputError):
    code = "undecodable_image"


class TruncatedImage(InputError):
    code = "truncated_image"


class DecompressionBomb(InputError):
    code = "decompression_bomb"


class UploadTooLarge(InputError):
    code = "upload_too_large"


class TooManyPixels(InputError):
    code = "too_many_pixels"


class ExtremeAspectRatio(InputError):
    """The image's longer side is more than ``MAX_ASPECT_RATIO`` (pipeline/decode.py) times its shorter side.

    Refused from the header, before any pixel is decoded. Memory does not need this
    rule (no stage ever builds a canvas larger than the decoded image or the 320-px
    output); it refuses inputs the model cannot use: a 1 x 65,500 strip becomes a
    line thinner than one pixel of the square condition image.
    """

    code = "extreme_aspect_ratio"


class NoForeground(InputError):
    """Background removal found no object to frame."""

    code = "no_foreground"


class InvalidOption(InputError):
    code = "invalid_option"


class InvalidOwner(InvalidOption):
    """An owner id outside the grammar in server/owners.py (at submit, or in an owner route)."""

    code = "invalid_owner"


class IdempotencyKeyReused(InvalidOption):
    """The same Idempotency-Key came with a different request."""

    code = "idempotency_key_reused"


class WebhookNotAllowed(InvalidOption):
    code = "webhook_not_allowed"


class PipelineNotLoaded(InvalidOption):
    """The job asked for a pipeline this server's profile does not load."""

    code = "pipeline_not_loaded"

    def __init__(self, pipeline: str, loaded: tuple[str, ...] | list[str]) -> None:
        self.loaded_pipelines = list(loaded)
        super().__init__(
            f"pipeline {pipeline!r} is not loaded on this server; loaded: {', '.join(self.loaded_pipelines)}"
        )

    @property
    def problem_fields(self) -> dict[str, object]:
        """Extra members of the problem body (the client can retry with one of these)."""
        return {"loaded_pipelines": self.loaded_pipelines}


class EmptyReconstruction(InputError):
    """The reconstructed density has no surface at the iso-level: no object the model could see."""

    code = "empty_reconstruction"


# -- jobs and their results --------------------------------------------------------


class JobNotFound(Lift3dError):
    """Unknown, or erased: the same answer for both, so ids cannot be probed."""

    code = "not_found"


class ResultNotFound(JobNotFound):
    """No such result: never stored, erased or expired."""


class ResultExpired(JobNotFound):
    code = "expired"


class LinkSignatureInvalid(Lift3dError):
    """A signed job link whose signature is wrong, expired, or made for another job or file."""

    code = "invalid_signature"


class JobNotFinished(Lift3dError):
    code = "job_not_finished"


class JobNotSucceeded(Lift3dError):
    code = "job_not_succeeded"


class JobCancelled(Lift3dError):
    code = "cancelled"


class DeadlineExceeded(Lift3dError):
    code = "deadline_exceeded"


# -- the service's own state -----------------------------------------------------------


class Unavailable(Lift3dError):
    """The service cannot take or run the job now; retrying later may work."""

    code = "unavailable"
    retry_after_seconds: int | None = None


class QueueFull(Unavailable):
    code = "queue_full"

    def __init__(self, message: str, *, retry_after_seconds: int) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class UploadsBusy(QueueFull):
    """The bytes of uploads being received at once would pass the server's budget (429, from the headers)."""

    code = "uploads_busy"


class TooManyConnections(Unavailable):
    """More connections are open than ``max_connections`` allows; answered before the app runs."""

    code = "too_many_connections"
    retry_after_seconds = 1


class ShuttingDown(Unavailable):
    code = "shutting_down"
    retry_after_seconds = 30


class EngineUnavailable(Unavailable):
    code = "engine_unavailable"


class WeightsMissing(Unavailable):
    """Weights for the requested mode are not on disk (run `lift3d weights pull`)."""

    code = "weights_missing"


class WeightsCorrupt(Unavailable):
    code = "weights_corrupt"


class DataDirInUse(Unavailable):
    """Another live lift3d process owns this data directory (its start-up would fail its jobs)."""

    code = "data_dir_in_use"


class WorkerStopped(Unavailable):
    """The worker thread has stopped (a bug): nothing queued would ever run, so nothing is taken."""

    code = "worker_stopped"


class StageHung(Unavailable):
    """A stage ran past its job's deadline without returning; the worker is stuck inside it."""

    code = "stage_hung"
    retry_after_seconds = 60


class StorageFull(Unavailable):
    """The data directory's disk (or quota) is full: nothing can be stored until space is freed."""

    code = "storage_full"
    retry_after_seconds = 60


class TooManyOpenFiles(Unavailable):
    """The process ran out of file descriptors (EMFILE/ENFILE); it recovers as connections close."""

    code = "too_many_open_files"
    retry_after_seconds = 10


class StorageUnavailable(Unavailable):
    """Any other failure of the job store or result store: an I/O error, a read-only disk, or
    an S3 endpoint that does not answer or refuses (after the client's own retries).

    Retryable: a job that finished while the store was down fails with this code
    (its model was not stored), and a later resubmission can succeed.
    """

    code = "storage_unavailable"
    retry_after_seconds = 30


class GpuOutOfMemory(Unavailable):
    """CUDA ran out of memory during a stage; the cache was freed and a retry may fit."""

    code = "gpu_out_of_memory"
    retry_after_seconds = 10


class NativeHelperCrashed(Lift3dError):
    """The finishing helper process died during this job's call (a native crash in decimation or
    UV packing, or the kernel's OOM killer); the server itself keeps running, the next call gets a new helper."""

    code = "finish_helper_crashed"


# -- stored results ----------------------------------------------------------------


class ResultStoreError(Lift3dError):
    code = "result_store_error"


class ResultDecryptionError(ResultStoreError):
    """A stored result cannot be authenticated: wrong or missing key, or tampered bytes.

    Raised instead of ever returning unauthenticated bytes.
    """

    code = "result_undecryptable"


class ResultStoreConfigError(ResultStoreError):
    """``LIFT3D_RESULTS`` or a companion setting names no usable store (a start-up error)."""

    code = "invalid_result_store"


class EncryptionKeyError(ResultStoreError):
    """A configured key is not a base64-encoded 32-byte AES-256 key (a start-up error)."""

    code = "invalid_encryption_key"


class EncryptionKeyMissing(EncryptionKeyError):
    """Stored results name key ids that no configured key has (a start-up error, never a new key)."""

    code = "encryption_key_missing"

    def __init__(self, message: str, *, key_ids: list[str]) -> None:
        super().__init__(message)
        self.key_ids = key_ids

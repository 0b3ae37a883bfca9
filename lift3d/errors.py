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


class IdempotencyKeyReused(InvalidOption):
    """The same Idempotency-Key came with a different request."""

    code = "idempotency_key_reused"


class WebhookNotAllowed(InvalidOption):
    code = "webhook_not_allowed"


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


# -- stored results ----------------------------------------------------------------


class ResultStoreError(Lift3dError):
    code = "result_store_error"


class ResultDecryptionError(ResultStoreError):
    """A stored result cannot be authenticated: wrong or missing key, or tampered bytes.

    Raised instead of ever returning unauthenticated bytes.
    """

    code = "result_undecryptable"


class EncryptionKeyError(ResultStoreError):
    """A configured key is not a base64-encoded 32-byte AES-256 key (a start-up error)."""

    code = "invalid_encryption_key"

"""Typed failures of a job.

Each error carries a stable machine ``code`` and the HTTP status the server maps
it to, so the HTTP edge never guesses (and never imports the engine's internals).
"""

from __future__ import annotations


class Lift3dError(Exception):
    code = "internal_error"
    http_status = 500

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class InputError(Lift3dError):
    """The client's input is wrong: a 4xx, never a 5xx."""

    code = "invalid_input"
    http_status = 422


class EmptyImage(InputError):
    code = "empty_image"


class UnsupportedFormat(InputError):
    code = "unsupported_media_type"
    http_status = 415


class UndecodableImage(InputError):
    code = "undecodable_image"


class TruncatedImage(InputError):
    code = "truncated_image"


class DecompressionBomb(InputError):
    code = "decompression_bomb"


class UploadTooLarge(InputError):
    code = "upload_too_large"
    http_status = 413


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


class EmptyReconstruction(InputError):
    """The reconstructed density has no surface at the iso-level: no object the model could see."""

    code = "empty_reconstruction"


class JobCancelled(Lift3dError):
    code = "cancelled"
    http_status = 409


class DeadlineExceeded(Lift3dError):
    code = "deadline_exceeded"
    http_status = 504


class WeightsMissing(Lift3dError):
    """Weights for the requested mode are not on disk (run `lift3d weights pull`)."""

    code = "weights_missing"
    http_status = 503


class WeightsCorrupt(Lift3dError):
    code = "weights_corrupt"
    http_status = 503

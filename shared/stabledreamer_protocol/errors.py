"""The one exception of the protocol, and the error codes that travel in ``error`` messages.

A :class:`ProtocolError` is both what the decoder raises on a malformed message and what the
backend turns into an ``error`` reply (``messages.Error.from_exception``).
``message`` says what went wrong, ``hint`` what the user can do about it (Dream Textures'
"errors that carry their fix"); the add-on shows both with ``report()``.
"""

from __future__ import annotations


class ErrorCode:
    """Codes used on the wire. New codes may appear in minor versions: treat unknown ones as
    ``internal``."""

    # Framing and schema (raised by the decoder).
    BAD_FRAME = "bad_frame"
    FRAME_COUNT = "frame_count"
    TOO_LARGE = "too_large"
    HEADER_TOO_LARGE = "header_too_large"
    BAD_JSON = "bad_json"
    BAD_HEADER = "bad_header"
    VERSION_MISMATCH = "version_mismatch"
    UNKNOWN_TYPE = "unknown_type"
    UNEXPECTED_TYPE = "unexpected_type"
    BAD_DESCRIPTOR = "bad_descriptor"
    BAD_DTYPE = "bad_dtype"
    BAD_SHAPE = "bad_shape"
    BUFFER_LENGTH = "buffer_length"
    BAD_BUFFER = "bad_buffer"
    BAD_FIELD = "bad_field"
    BAD_SIGNATURE = "bad_signature"
    PROMPT_TOO_LONG = "prompt_too_long"
    TOO_MANY_POINTS = "too_many_points"
    # Requests the backend refuses.
    QUEUE_FULL = "queue_full"
    UNKNOWN_JOB = "unknown_job"
    JOB_CONFLICT = "job_conflict"
    NOT_READY = "not_ready"
    UNKNOWN_PRESET = "unknown_preset"
    UNSUPPORTED = "unsupported"
    BAD_OVERRIDE = "bad_override"
    INSECURE_KEY_FILE = "insecure_key_file"
    BUSY = "busy"
    """Too much is already waiting to be sent to this client (since 1.2)."""
    FORBIDDEN = "forbidden"
    """The job belongs to another client key (since 1.2)."""
    DISK_FULL = "disk_full"
    """The backend's disk is full (since 1.2); the message names the folder and the space."""
    UNKNOWN_PARENT = "unknown_parent"
    """A refine or continue names a parent job the backend does not have (since 1.5)."""
    PARENT_NOT_DONE = "parent_not_done"
    """A refine or continue names a parent job that is not done (since 1.5)."""
    CURVE_REQUIRED = "curve_required"
    """A secret (the hub token) refused on a link without CURVE encryption (since 1.3)."""
    # Failures while running a job.
    OUT_OF_MEMORY = "out_of_memory"
    MODEL_UNAVAILABLE = "model_unavailable"
    MODELS_MISSING = "models_missing"
    """A text job's model set is not downloaded on the backend (since 1.3); the message names
    the set, what is missing and the command that downloads it."""
    JOB_FAILED = "job_failed"
    INTERNAL = "internal"
    # Client side only (never sent).
    TIMEOUT = "timeout"
    CHECKSUM = "checksum"


DEFAULT_HINTS: dict[str, str] = {
    ErrorCode.VERSION_MISMATCH: "Update the add-on and the backend to the same release.",
    ErrorCode.BAD_SIGNATURE: "Both sides must use the same HMAC key (or none).",
    ErrorCode.PROMPT_TOO_LONG: "Shorten the prompt.",
    ErrorCode.TOO_MANY_POINTS: "Use fewer points (decimate the point cloud).",
    ErrorCode.TOO_LARGE: "Send less data in one message (decimate the mesh or point cloud).",
    ErrorCode.QUEUE_FULL: "Wait for a job to finish or cancel one, then submit again.",
    ErrorCode.UNKNOWN_JOB: "The backend does not know this job; it may have been restarted "
    "without its run folder. Submit it again.",
    ErrorCode.JOB_CONFLICT: "This job id is already used by a different request: "
    "pick a new job id.",
    ErrorCode.NOT_READY: "Wait for the job to finish before fetching its result.",
    ErrorCode.UNKNOWN_PRESET: "Pick one of the presets the backend lists.",
    ErrorCode.OUT_OF_MEMORY: "Use a lighter preset or fewer Gaussians, or free GPU memory.",
    ErrorCode.MODEL_UNAVAILABLE: "Download the model on the backend machine, or pick another.",
    ErrorCode.MODELS_MISSING: "Download the model set on the backend (`stabledreamer models "
    "download SET`), or pick a set that is there.",
    ErrorCode.BUSY: "Read the replies already sent (fewer requests in flight), then ask again.",
    ErrorCode.FORBIDDEN: "Only the client key that submitted a job (or an operator key) may "
    "see or change it.",
    ErrorCode.DISK_FULL: "Free space on the backend's disk (or delete old jobs); the job goes on "
    "by itself once there is room.",
    ErrorCode.UNKNOWN_PARENT: "Refine or continue a finished run the backend still has (old "
    "runs are deleted by its retention policy); or generate it again.",
    ErrorCode.PARENT_NOT_DONE: "Refine or continue a run once it is done.",
    ErrorCode.CURVE_REQUIRED: "Run the backend with CURVE (its default: leave out --no-curve), "
    "or give the token on the backend machine: `stabledreamer models token set`.",
    ErrorCode.INSECURE_KEY_FILE: "Make the secret key file readable by you only (chmod 600).",
    ErrorCode.TIMEOUT: "Is the backend running, at this address, with matching keys?",
}


class ProtocolError(Exception):
    """A malformed or refused message, with a stable ``code``, a ``message`` and a user ``hint``.

    ``ref`` is the id of the offending message and ``job`` its job id, when the decoder got far
    enough to read them (so the server can address its ``error`` reply).
    """

    def __init__(
        self,
        code: str,
        message: str,
        hint: str | None = None,
        *,
        ref: str | None = None,
        job: str | None = None,
    ) -> None:
        super().__init__(f"[{code}] {message}")
        self.code = code
        self.message = message
        self.hint = hint if hint is not None else DEFAULT_HINTS.get(code, "")
        self.ref = ref
        self.job = job

    def __reduce__(self):  # keep picklable for multiprocessing (never sent over the wire)
        return (_rebuild, (self.code, self.message, self.hint, self.ref, self.job))


def _rebuild(code, message, hint, ref, job):
    return ProtocolError(code, message, hint, ref=ref, job=job)

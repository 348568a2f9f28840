"""Limits against bad or buggy peers, checked by the decoder before any array is touched.

One frozen dataclass so a server can tighten them (``dataclasses.replace(DEFAULT_LIMITS, ...)``);
the backend's ``hello`` reply publishes its values (:meth:`Limits.to_dict`) so a client can check a
prompt's length before sending it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

MiB = 1 << 20


@dataclass(frozen=True)
class Limits:
    max_message_bytes: int = 64 * MiB
    """Sum of all frames of one message. Also set as each socket's ``zmq.MAXMSGSIZE`` (which
    libzmq applies per frame and enforces by dropping the connection, so no reply is possible)."""
    max_header_bytes: int = 64 * 1024
    """Size of the JSON header frame."""
    max_buffers: int = 8
    """Raw buffers after the header (so at most ``1 + max_buffers`` frames, +1 when signed)."""
    max_ndim: int = 4
    """Dimensions of one array."""
    max_id_chars: int = 64
    """Message ids and job ids."""
    max_name_chars: int = 128
    """Presets, stages, file names, labels, error codes and other short strings."""
    max_text_chars: int = 4000
    """Free text: error messages and hints, job status messages."""
    max_prompt_chars: int = 2000
    """Prompt and negative prompt, each, in characters (Python ``len``)."""
    max_preview_points: int = 1_000_000
    """Gaussians in one ``preview`` (34 bytes each: 34 MB)."""
    max_init_points: int = 1_000_000
    """Points in a ``submit``'s optional initial point cloud."""
    max_target_bytes: int = 48 * MiB
    """A reconstruction target sent inside ``submit`` (mesh file bytes or vertex+face arrays)."""
    max_image_side: int = 4096
    """Height and width of a ``debug_image``."""
    max_chunk_bytes: int = 4 * MiB
    """Payload of one ``result_chunk``."""
    max_result_bytes: int = 2048 * MiB
    """One result file."""
    max_result_files: int = 16
    """Files in one ``result`` manifest."""
    max_queue: int = 32
    """Jobs queued or running at once on one backend (enforced by the server: ``queue_full``)."""
    max_jobs_listed: int = 1000
    """Entries in one ``jobs`` reply."""

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Limits:
        """Known integer fields of ``data``; anything else (a newer peer's extra limits) ignored."""
        names = {f.name for f in fields(cls)}
        known = {
            k: v
            for k, v in data.items()
            if k in names and isinstance(v, int) and not isinstance(v, bool) and v >= 0
        }
        return cls(**known)


DEFAULT_LIMITS = Limits()

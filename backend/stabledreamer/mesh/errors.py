"""The one error type of the mesh step."""

from __future__ import annotations

from ..errors import StableDreamerError


class MeshError(StableDreamerError):
    """The Gaussians cannot be turned into a mesh as asked; the message says why and what to do."""

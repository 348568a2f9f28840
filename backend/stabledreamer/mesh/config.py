"""Settings of the mesh step (light: imported by the run configuration)."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import MeshError


@dataclass
class MeshConfig:
    """How Gaussians become a textured mesh (``stabledreamer mesh`` and the end of every run)."""

    enabled: bool = True
    """Run the mesh step at the end of ``reconstruct``/``demo`` (writes ``mesh.glb``)."""
    faces: int = 50_000
    """Face target of the decimation (a mesh with fewer faces is kept as it is)."""
    texture_size: int = 1024
    """Base-colour texture size in texels (square)."""
    grid: int = 128
    """Density grid resolution: voxels along the longest side of the object's box. Finer grids
    follow single Gaussians more and the surface gets bumpier: on the demo, 128 gave a lower
    Chamfer distance and higher mesh PSNR than 192 or 256."""
    min_opacity: float = 0.02
    """Gaussians fainter than this are left out of the grid (and of the bounds)."""
    level_fraction: float = 1.0
    """Iso-level = this x the level whose silhouettes match the Gaussians' (see extract)."""
    filter_voxels: float = 0.5
    """3D low-pass filter of every Gaussian, in voxels (see density)."""
    min_component_ratio: float = 0.01
    """Floaters: connected pieces with less area than this x the largest piece's are removed."""
    views: int = 32
    """Bake views (Fibonacci sphere around the object)."""
    view_resolution: int = 384
    """Bake render size in pixels (square)."""
    uv_padding: int = 2
    """Texels between UV charts (the bake dilates colours into it)."""
    threads: int = 1
    """torch threads while meshing (restored after; 0 = leave torch's setting). Its torch work is
    many mid-sized operations that stall badly when a second thread waits on a busy core (15x
    slower measured on a shared 2-core CPU), and the slowest step (xatlas) is single-threaded."""
    chamfer_samples: int = 50_000
    """Points per side for the ``chamfer`` metric of ``reconstruct`` (see chamfer)."""
    chamfer_views: int = 40
    """Cameras around the target that decide which of its surface is visible (chamfer)."""
    chamfer_resolution: int = 512
    """Depth-buffer size of those cameras in pixels (chamfer)."""

    def validate(self) -> None:
        if self.faces < 4:
            raise MeshError(f"the face target must be at least 4, got {self.faces}")
        if self.texture_size < 16:
            raise MeshError(f"the texture size must be at least 16, got {self.texture_size}")
        if self.grid < 8:
            raise MeshError(f"the grid resolution must be at least 8, got {self.grid}")
        if self.views < 1 or self.view_resolution < 16:
            raise MeshError("the bake needs at least 1 view of at least 16 x 16 pixels")

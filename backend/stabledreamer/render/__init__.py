"""Rendering Gaussians: one pure ``render()`` and the paths behind it.

``dispatch`` holds ``render()`` (the one entry point: CPU or gsplat on CUDA, one signature);
``projection`` the pure-torch 3D -> 2D projection; ``raster_torch`` the pure-torch sparse-pair
rasteriser; ``raster_native`` the C++ kernel (``csrc/``, compiled at install time as
``native_build`` says); ``reference`` the dense float64 reference the fast paths are tested
against; ``build_guard`` keeps run-time native builds (gsplat's) from wedging on a killed one.
"""

from .dispatch import RenderOutput, gaussian_colors, render

__all__ = ["RenderOutput", "gaussian_colors", "render"]

"""Rendering Gaussians: one pure ``render()`` and the paths behind it.

``dispatch`` holds ``render()`` (the one entry point, one signature, the rasteriser named by the
caller); ``backend`` chooses that rasteriser once per run (gsplat | native | torch);
``gsplat_kernels`` says whether gsplat's CUDA kernels are there and builds them visibly;
``projection`` the pure-torch 3D -> 2D projection; ``raster_torch`` the pure-torch sparse-pair
rasteriser; ``raster_native`` the C++ kernel (``csrc/``, compiled at install time as
``native_build`` says); ``reference`` the dense float64 reference the fast paths are tested
against; ``build_guard`` keeps run-time native builds (gsplat's) from wedging on a killed one.
"""

from .dispatch import RenderOutput, gaussian_colors, render

__all__ = ["RenderOutput", "gaussian_colors", "render"]

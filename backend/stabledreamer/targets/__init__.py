"""Ground-truth meshes for the oracle: loading and normalising (``target_mesh``), the exact
z-buffer rasteriser (``raster``) and the built-in procedural demo object (``procedural``)."""

"""StableDreamer backend: 3D Gaussians shaped by score distillation (Guo et al., 2023)."""

__version__ = "0.1.0"

"""Isosurface extraction: density or SDF grids to triangle meshes (plain torch, CPU and CUDA)."""

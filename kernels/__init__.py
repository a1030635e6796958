"""CUDA C sources of the fused pointwise kernels, shipped as package data (rnncells.kernels)."""

"""The CUDA backend: device-resident models and batched scoring on the GPU."""

"""inpaint_fast: fused kernels for deep image inpainting, as PyTorch custom ops."""

"""Custom-op registration (fake kernels, autograd, backend dispatch, input checks) and public functions."""

from .fusion_block import fusion_block
from .short_long_attention import short_long_attention

__all__ = ["fusion_block", "short_long_attention"]

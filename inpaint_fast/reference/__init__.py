"""Readable pure-PyTorch definitions of the operators: the oracle for parity tests and gradcheck."""

from .fusion_block import fusion_block
from .short_long_attention import attention_map, short_long_attention

__all__ = ["attention_map", "fusion_block", "short_long_attention"]

"""inpaint_fast: fused kernels for deep image inpainting, as PyTorch custom ops.

Operators (each with ``backend="auto" | "reference" | "cpu" | "triton" | "cuda"``):

* :func:`short_long_attention` — PIC's short+long-range attention, N×N never stored.
* :func:`fusion_block` — DFNet's fusion block (raw completion, learned alpha, blend).

Drop-in modules live in :mod:`inpaint_fast.nn`; the pure-PyTorch definitions in
:mod:`inpaint_fast.reference`.
"""

from . import _extension  # noqa: F401  (loads the compiled ops first)
from .backends import BACKENDS, BackendError, available_backends, get_backend, set_backend, use_backend
from .ops import fusion_block, short_long_attention
from .fusion_block_params import FusionBlockParams
from .reference import attention_map

# The drop-in modules and the reference are part of the namespace, as torch.nn is of torch's
# (imported after the ops they call).
from . import nn, reference  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "BackendError",
    "FusionBlockParams",
    "attention_map",
    "available_backends",
    "fusion_block",
    "get_backend",
    "nn",
    "reference",
    "set_backend",
    "short_long_attention",
    "use_backend",
]

"""The fusion block's 16 parameters and buffers under one name and in one order.

:class:`FusionBlockParams` is what :func:`inpaint_fast.fusion_block` and the reference take, and
``*params`` is what the compiled and Triton ops take (their schemas, inpaint_fast/ops/schemas.inc,
list the tensors flat in this order; the C++ kernels' struct, csrc/fusion_block_params.h, keeps
it too). It lives below the ops and the kernels so that both can use it.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn

__all__ = ["DFNET_LAYERS", "FusionBlockParams", "PARAM_NAMES", "RUNNING_STATS", "TRAINABLE"]

# Where each layer of the block lives in DFNet's FusionBlock module (its state-dict prefixes,
# which inpaint_fast.nn.FusionBlock keeps): a parameter ``<layer>_<attr>`` is ``<path>.<attr>``.
DFNET_LAYERS = {
    "map": "map2img.0.conv", "conv1": "blend.blend.0.conv", "bn1": "blend.blend.1",
    "conv2": "blend.blend.3.conv", "bn2": "blend.blend.4", "conv3": "blend.blend.6.conv",
}  # fmt: skip


class FusionBlockParams(NamedTuple):
    """The fusion block's 16 parameters and buffers, in the op schemas' order
    (inpaint_fast/ops/schemas.inc), so ``*params`` is what the compiled and Triton ops take.

    c = feature channels, Cm = the blend's middle channels (32 in DFNet), A = c_alpha ∈ {1, 3}.
    Build one by name, or from a module with DFNet's layout (:meth:`from_module`).
    """

    map_weight: Tensor  # (3, c, 1, 1)   map2img.0.conv
    map_bias: Tensor  # (3,)
    conv1_weight: Tensor  # (Cm, 6, 1, 1)   blend.blend.0.conv
    conv1_bias: Tensor  # (Cm,)
    bn1_weight: Tensor  # (Cm,)   blend.blend.1
    bn1_bias: Tensor  # (Cm,)
    bn1_running_mean: Tensor  # (Cm,)
    bn1_running_var: Tensor  # (Cm,)
    conv2_weight: Tensor  # (A, Cm, 3, 3)   blend.blend.3.conv
    conv2_bias: Tensor  # (A,)
    bn2_weight: Tensor  # (A,)   blend.blend.4
    bn2_bias: Tensor  # (A,)
    bn2_running_mean: Tensor  # (A,)
    bn2_running_var: Tensor  # (A,)
    conv3_weight: Tensor  # (A, A, 1, 1)   blend.blend.6.conv
    conv3_bias: Tensor  # (A,)

    @classmethod
    def from_module(cls, block: nn.Module) -> "FusionBlockParams":
        """The tensors of a fusion-block module with DFNet's layout (``map2img.0.conv``,
        ``blend.blend.{0,1,3,4,6}``): :class:`inpaint_fast.nn.FusionBlock` or DFNet's own. The
        module's tensors themselves, not copies: training updates its running statistics."""
        layers = {name: block.get_submodule(path) for name, path in DFNET_LAYERS.items()}
        return cls._make(getattr(layers[layer], attr) for layer, attr in (name.split("_", 1) for name in cls._fields))


# The op's order; the four BatchNorm running statistics (updated in training, read in eval) and
# the 12 trainable tensors, in the order of the backward op's gradients.
PARAM_NAMES = FusionBlockParams._fields
RUNNING_STATS = tuple(k for k in PARAM_NAMES if "_running_" in k)
TRAINABLE = tuple(k for k in PARAM_NAMES if k not in RUNNING_STATS)

"""Reading PIC's official checkpoints (``<iter>_net_{E,G,D,D_rec}.pth``) into our networks.

PIC's layout (docs/pic.md#official-checkpoint-layout) and the rule that renames its keys to ours
are :mod:`inpaint_fast.nn.pic_layout`'s (:func:`convert_pic_state_dict`, :func:`pic_key_aliases`,
re-exported here); this module reads the files, checks them against a whole network and loads
them.

The Sequential indices assumed per block (from the Sequential contents of PIC's blocks,
docs/pic.md#official-checkpoint-layout; our blocks
return them from ``pic_aliases()``)::

    ResBlock, ResBlockDecoder, PreActResBlock (no norm):  model.1 = conv1, model.3 = conv2,
                                                          shortcut.0 = bypass
    ResBlock, ResBlockDecoder with InstanceNorm (G):      model.0 = norm1, model.2 = conv1,
                                                          model.3 = norm2, model.5 = conv2,
                                                          shortcut.0 = bypass
    ResBlockEncoderOptimized (no norm):                   model.0 = conv1, model.2 = conv2,
                                                          shortcut.1 = bypass (AvgPool first)
    Output:                                               model.2 = conv1 (act, pad, conv, tanh)
    ShortLongAttention (Auto_Attn):                       query_conv, gamma, alpha as they are;
                                                          its ``model`` is a PreActResBlock
    ResDiscriminator.conv:                                a bare SN conv: conv.module.*, once

Two assumptions beyond what PIC's module structure implies (docs/pic.md#official-checkpoint-layout),
both failing loudly if wrong: PIC's norm layers are
constructed inline in the Sequential (no attribute of their own, so they appear once, as
``model.0``/``model.3``); if a real file also had them under an attribute name, a strict load
would list those keys as unexpected. D's final conv is a bare SN conv attribute (``conv.module.*``).

A key whose Sequential index is not in this table (or any other unknown key) is reported as
unexpected by a strict load and never loaded into some other conv.
"""

from __future__ import annotations

import os
from typing import Mapping, Optional, Union

import torch
from torch import Tensor, nn

from ..nn.pic_layout import convert_pic_state_dict, pic_key_aliases

__all__ = ["convert_pic_state_dict", "load_pic_checkpoints", "load_pic_state_dict", "pic_key_aliases"]

StateDictLike = Union[str, "os.PathLike[str]", Mapping[str, Tensor]]


def _read(source: StateDictLike, where: str) -> Mapping[str, Tensor]:
    if isinstance(source, Mapping):
        return source
    if isinstance(source, (str, os.PathLike)):
        if not os.path.isfile(source):
            raise FileNotFoundError(f"{where}: no checkpoint file at {os.fspath(source)!r} "
                                    f"(expected PIC's <iter>_net_X.pth)")
        obj = torch.load(source, map_location="cpu", weights_only=True)
        if not isinstance(obj, Mapping):
            raise TypeError(f"{where}: {os.fspath(source)!r} holds a {type(obj).__name__}, expected a state dict")
        return obj
    raise TypeError(f"{where}: expected a path or a state dict (mapping name → tensor), got {type(source).__name__}")


def load_pic_state_dict(model: nn.Module, source: StateDictLike, *, strict: bool = True, name: str = "net") -> None:
    """Load one of PIC's network state dicts (path or mapping) into ``model``.

    Args:
        model: our network (``ResEncoder``, ``ResGenerator`` or ``ResDiscriminator``).
        source: path to ``<iter>_net_X.pth`` or a state dict, in PIC's layout (ours also accepted).
        strict: if True, a missing or unexpected key raises ``RuntimeError`` listing each missing
            key in both layouts and each unexpected key as given; if False, loads what matches.
        name: the network's name in error messages (``"E"``, ``"G"``, ...).
    """
    where = f"load_pic_checkpoints({name})"
    converted, missing, unexpected = convert_pic_state_dict(model, _read(source, where), where=where)
    if strict and (missing or unexpected):
        aliases = pic_key_aliases(model)
        lines = [f"{where}: the state dict does not match PIC's layout of this network."]
        if missing:
            lines.append(f"Missing ({len(missing)}): " + "; ".join(
                f"{k} (PIC: {' or '.join(aliases[k])})" for k in missing))
        if unexpected:
            lines.append(f"Unexpected ({len(unexpected)}): " + "; ".join(unexpected))
        raise RuntimeError("\n  ".join(lines))
    # strict=True here would be redundant (checked above, with better messages).
    with torch.no_grad():
        model.load_state_dict(converted, strict=False)


def load_pic_checkpoints(model: nn.Module, *, E: Optional[StateDictLike] = None, G: Optional[StateDictLike] = None,
                         D: Optional[StateDictLike] = None, D_rec: Optional[StateDictLike] = None,
                         strict: bool = True) -> None:
    """Load PIC's ``<iter>_net_{E,G,D,D_rec}.pth`` into a :class:`~inpaint_fast.models.pic.PIC`.

    Args:
        model: the PIC model (uses ``net_E``, ``net_G``, ``net_D``, ``net_D_rec``).
        E, G, D, D_rec: each a path or a state dict in PIC's layout, or None to leave that network
            as it is. Test-time sampling needs only E and G.
        strict: see :func:`load_pic_state_dict`.
    """
    given = {"E": (E, "net_E"), "G": (G, "net_G"), "D": (D, "net_D"), "D_rec": (D_rec, "net_D_rec")}
    if all(src is None for src, _ in given.values()):
        raise ValueError("load_pic_checkpoints: pass at least one of E=, G=, D=, D_rec=")
    for name, (src, attr) in given.items():
        if src is not None:
            load_pic_state_dict(getattr(model, attr), src, strict=strict, name=name)

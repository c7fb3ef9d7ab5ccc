"""Reading PIC's official checkpoints (``<iter>_net_{E,G,D,D_rec}.pth``) into our networks.

PIC's layout (docs/pic.md#official-checkpoint-layout; inferred from PyTorch's ``state_dict`` rules,
not from a real file):

* an optional ``module.`` prefix on every key (saved from ``DataParallel``);
* a spectral-normed conv ``X`` stores ``X.module.{weight_bar, weight_u, weight_v, bias}`` (PIC's
  wrapper holds the conv as ``.module``); ours stores ``X.{weight_bar, weight_u, weight_v, bias}``;
* each such conv is registered twice, as an attribute and inside an ``nn.Sequential``, so it
  appears under both names (equal tensors); norm layers exist only inside the Sequential.

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
unexpected by a strict load and never loaded into some other conv. Keys already in our own layout
are accepted too.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from ..nn import PreActResBlock
from ..nn.spectral_norm import SpectralNormConv2d, SpectralNormConvTranspose2d
from .pic_blocks import resblock_pic_aliases

__all__ = ["convert_pic_state_dict", "load_pic_checkpoints", "load_pic_state_dict", "pic_key_aliases"]

_SN_TYPES = (SpectralNormConv2d, SpectralNormConvTranspose2d)
_SN_TENSORS = ("weight_bar", "weight_u", "weight_v", "bias")
_DATA_PARALLEL = "module."

StateDictLike = Union[str, "os.PathLike[str]", Mapping[str, Tensor]]


def _block_aliases(module: nn.Module) -> Dict[str, str]:
    """PIC Sequential name → our attribute name, for one block (empty for non-blocks)."""
    if hasattr(module, "pic_aliases"):
        return module.pic_aliases()
    if isinstance(module, PreActResBlock):  # the attention's inner block: never has a norm
        return resblock_pic_aliases(False)
    return {}


def pic_key_aliases(model: nn.Module) -> "OrderedDict[str, List[str]]":
    """For each key of ``model.state_dict()``, the names PIC's checkpoint uses for it.

    The first PIC name is the attribute path (with ``.module.`` for spectral-normed tensors); a
    second one, when present, is the Sequential path. No ``module.`` (DataParallel) prefix.

    Args:
        model: one of our PIC networks (or any module built from the same blocks).

    Returns:
        ``OrderedDict`` our key → list of PIC keys, in ``state_dict`` order.
    """
    modules = dict(model.named_modules())
    aliases: "OrderedDict[str, List[str]]" = OrderedDict()
    for key in model.state_dict().keys():
        owner, _, leaf = key.rpartition(".")
        module = modules.get(owner)
        sn = isinstance(module, _SN_TYPES) and leaf in _SN_TENSORS
        tail = f"module.{leaf}" if sn else leaf
        names = [f"{owner}.{tail}" if owner else tail]
        # The Sequential copy: the owner's parent block lists owner's attribute under an index.
        parent_path, _, attr = owner.rpartition(".")
        parent = modules.get(parent_path) if owner else None
        if parent is not None:
            inverse = {ours: pic for pic, ours in _block_aliases(parent).items()}
            if attr in inverse:
                seq = f"{parent_path}.{inverse[attr]}" if parent_path else inverse[attr]
                if attr.startswith("norm"):
                    names = [f"{seq}.{tail}"]  # PIC's norms live only in the Sequential
                else:
                    names.append(f"{seq}.{tail}")
        aliases[key] = names
    return aliases


def convert_pic_state_dict(
    model: nn.Module, state_dict: Mapping[str, Tensor], *, where: str = "convert_pic_state_dict"
) -> Tuple["OrderedDict[str, Tensor]", List[str], List[str]]:
    """PIC checkpoint layout → ``model``'s state-dict layout.

    Strips one ``module.`` prefix per key, maps every known PIC name onto our key, checks that
    the two copies of a doubly-registered conv hold equal tensors (``ValueError`` otherwise) and
    keeps one.

    Args:
        model: the network the state dict is for (e.g. ``pic.net_G``).
        state_dict: PIC's keys (or ours) → tensors.
        where: prefix of error messages.

    Returns:
        ``(converted, missing, unexpected)``: converted in our names; missing = our keys given
        under no name; unexpected = given keys (as given) that map to nothing.
    """
    aliases = pic_key_aliases(model)
    lookup: Dict[str, str] = {}
    for ours, pics in aliases.items():
        lookup[ours] = ours
        for pic in pics:
            lookup[pic] = ours
    converted: "OrderedDict[str, Tensor]" = OrderedDict()
    first_source: Dict[str, str] = {}
    unexpected: List[str] = []
    for key, value in state_dict.items():
        name = key[len(_DATA_PARALLEL):] if key.startswith(_DATA_PARALLEL) and key not in lookup else key
        ours = lookup.get(name)
        if ours is None:
            unexpected.append(key)
            continue
        if ours in converted:
            prev = converted[ours]
            if prev.shape != value.shape or prev.dtype != value.dtype or not torch.equal(prev, value):
                raise ValueError(
                    f"{where}: {key!r} and {first_source[ours]!r} both name {ours!r} (one conv registered "
                    f"twice in PIC's layout) but hold different values"
                )
            continue
        converted[ours] = value
        first_source[ours] = key
    missing = [k for k in aliases if k not in converted]
    return converted, missing, unexpected


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

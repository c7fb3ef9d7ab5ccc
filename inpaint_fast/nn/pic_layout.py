"""PIC's checkpoint layout, and the one rule that renames its keys to our modules' keys.

PIC's layout (docs/pic.md#official-checkpoint-layout; inferred from PyTorch's ``state_dict`` rules,
not from a real file):

* an optional ``module.`` prefix on every key (saved from ``DataParallel``);
* a spectral-normed conv ``X`` stores ``X.module.{weight_bar, weight_u, weight_v, bias}`` (PIC's
  wrapper holds the conv as ``.module``); ours stores ``X.{weight_bar, weight_u, weight_v, bias}``;
* each such conv is registered twice, as an attribute and inside an ``nn.Sequential``, so it
  appears under both names (equal tensors); norm layers exist only inside the Sequential.

A block tells the rule which Sequential index holds which of its attributes through a
``pic_aliases()`` method (PIC Sequential name → our attribute name); :func:`resblock_pic_aliases`
is that table for PIC's pre-activation ResBlock. Everything else is derived from the module tree
of the network a state dict is for (:func:`pic_key_aliases`), so a key whose Sequential index is
not in a block's table (or any other unknown key) maps to nothing: a strict load reports it as
unexpected, and it is never loaded into some other conv. Keys already in our own layout are
accepted too.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Mapping, Tuple

import torch
from torch import Tensor, nn

from .spectral_norm import SpectralNormConv2d, SpectralNormConvTranspose2d

__all__ = ["convert_pic_layer_state_dict", "convert_pic_state_dict", "pic_key_aliases", "resblock_pic_aliases"]

_SN_TYPES = (SpectralNormConv2d, SpectralNormConvTranspose2d)
_SN_TENSORS = ("weight_bar", "weight_u", "weight_v", "bias")
_DATA_PARALLEL = "module."


def resblock_pic_aliases(has_norm: bool) -> Dict[str, str]:
    """PIC's Sequential names → our attribute names for a pre-activation ResBlock (and the decoder).

    PIC builds ``model = Sequential([norm(in)], act, conv1, [norm(hidden)], act, conv2)`` and
    ``shortcut = Sequential(bypass)`` (docs/pic.md#official-checkpoint-layout), so without norms conv1/conv2 are
    ``model.1``/``model.3`` and with norms ``model.2``/``model.5`` (norms at ``model.0``/``model.3``,
    registered only there). ``bypass`` is ``shortcut.0``. Also right for
    :class:`inpaint_fast.nn.PreActResBlock` (the no-norm case).
    """
    if has_norm:
        return {"model.0": "norm1", "model.2": "conv1", "model.3": "norm2", "model.5": "conv2", "shortcut.0": "bypass"}
    return {"model.1": "conv1", "model.3": "conv2", "shortcut.0": "bypass"}


def _block_aliases(module: nn.Module) -> Dict[str, str]:
    """PIC Sequential name → our attribute name, for one block (empty for non-blocks)."""
    return module.pic_aliases() if hasattr(module, "pic_aliases") else {}


def pic_key_aliases(model: nn.Module) -> "OrderedDict[str, List[str]]":
    """For each key of ``model.state_dict()``, the names PIC's checkpoint uses for it.

    The first PIC name is the attribute path (with ``.module.`` for spectral-normed tensors); a
    second one, when present, is the Sequential path. No ``module.`` (DataParallel) prefix.

    Args:
        model: one of our PIC networks or layers (or any module built from the same blocks).

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
        model: the network or layer the state dict is for (e.g. ``pic.net_G``).
        state_dict: PIC's keys (or ours) → tensors.
        where: prefix of error messages.

    Returns:
        ``(converted, missing, unexpected)``: converted in our names; missing = our keys given
        under no name; unexpected = given keys (as given) that map to nothing.
    """
    converted, missing, unexpected = _convert(model, state_dict, "", where)
    return converted, missing, [key for key, _ in unexpected]


def convert_pic_layer_state_dict(
    layer: nn.Module, state_dict: Mapping[str, Tensor], prefix: str = "", *, where: str
) -> Tuple["OrderedDict[str, Tensor]", List[str], List[str]]:
    """:func:`convert_pic_state_dict` for one layer, alone or inside a whole network's state dict,
    keeping what maps to nothing.

    ``prefix`` is the layer's name in the network (e.g. ``"attn1."``), after any ``module.``; only
    keys under it are taken (``KeyError`` if there are none). Keys that map to nothing stay in
    ``converted`` under their name in the layer, so ``nn.Module.load_state_dict`` reports them as
    unexpected.

    Returns:
        ``(converted, missing, unexpected)``, every key named relative to the layer.
    """
    converted, missing, unexpected = _convert(layer, state_dict, prefix, where)
    for key, name in unexpected:
        converted[name] = state_dict[key]
    return converted, missing, [name for _, name in unexpected]


def _convert(model: nn.Module, state_dict: Mapping[str, Tensor], prefix: str, where: str
             ) -> Tuple["OrderedDict[str, Tensor]", List[str], List[Tuple[str, str]]]:
    """What both converters return, the unexpected keys as (given key, name in ``model``)."""
    aliases = pic_key_aliases(model)
    lookup: Dict[str, str] = {}
    for ours, pics in aliases.items():
        lookup[ours] = ours
        for pic in pics:
            lookup[pic] = ours
    converted: "OrderedDict[str, Tensor]" = OrderedDict()
    first_source: Dict[str, str] = {}
    unexpected: List[Tuple[str, str]] = []
    taken = 0
    for key, value in state_dict.items():
        name = key[len(_DATA_PARALLEL):] if key.startswith(_DATA_PARALLEL) and key not in lookup else key
        if prefix:
            if not name.startswith(prefix):
                continue
            name = name[len(prefix):]
        taken += 1
        ours = lookup.get(name)
        if ours is None:
            unexpected.append((key, name))
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
    if prefix and not taken:
        raise KeyError(f"{where}: no key starts with prefix {prefix!r}")
    missing = [k for k in aliases if k not in converted]
    return converted, missing, unexpected

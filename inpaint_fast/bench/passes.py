"""The zero-argument callables that run one pass (``fwd``, ``bwd``, ``fwd+bwd``) of a provider.

Backward runs ``torch.autograd.grad`` on every differentiable input with fixed random output
gradients, so nothing accumulates into ``.grad`` between runs; the gate (:mod:`.gate`) takes its
input gradients the same way.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import torch

from .op_bench import Inputs, ProviderFn

__all__ = ["input_grads", "make_callable", "random_grad_outputs"]


def random_grad_outputs(outs: Sequence[Optional[torch.Tensor]], seed: int) -> List[Optional[torch.Tensor]]:
    """One output gradient per output (None for None): standard normal, drawn from ``seed`` alone."""
    g = torch.Generator().manual_seed(seed + 7919)
    return [
        None if o is None else torch.randn(o.shape, generator=g, dtype=torch.float32).to(o.device, o.dtype)
        for o in outs
    ]


def input_grads(outs, grad_outs, inputs: Inputs, retain_graph: bool = False):
    """The gradients of ``inputs.grad`` (in that order, None where unused) for ``grad_outs``."""
    pairs = [(o, g) for o, g in zip(outs, grad_outs) if o is not None and o.requires_grad]
    wrt = [inputs.kwargs[n] for n in inputs.grad]
    return torch.autograd.grad(
        [o for o, _ in pairs], wrt, [g for _, g in pairs], retain_graph=retain_graph, allow_unused=True
    )


def make_callable(fn: ProviderFn, inputs: Inputs, pass_: str, seed: int = 0) -> Callable[[], object]:
    """The zero-argument callable that does one ``pass_`` of ``fn`` on ``inputs``."""
    kwargs = inputs.kwargs
    if pass_ == "fwd":

        def forward():
            with torch.no_grad():
                return fn(**kwargs)

        return forward
    if pass_ == "fwd+bwd":
        grad_outs = None

        def step():
            nonlocal grad_outs
            outs = fn(**kwargs)
            if grad_outs is None:
                grad_outs = random_grad_outputs(outs, seed)
            return input_grads(outs, grad_outs, inputs)

        return step
    if pass_ == "bwd":
        outs = fn(**kwargs)
        grad_outs = random_grad_outputs(outs, seed)
        return lambda: input_grads(outs, grad_outs, inputs, retain_graph=True)
    raise ValueError(f"unknown pass {pass_!r}")

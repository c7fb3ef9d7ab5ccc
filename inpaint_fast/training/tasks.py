"""The PIC and DFNet training tasks: each paper's optimisation step as a :class:`TrainTask`.

* :class:`PICTask` (docs/pic.md#optimisation): Adam(lr 1e-4, betas (0, 0.999)) for E+G and for D+D_rec; per
  step one E+G forward, a D step on both discriminators (generator outputs detached), then a G/E
  step with the discriminators frozen (so it sees the just-updated discriminators).
* :class:`DFNetTask` (docs/dfnet.md#training-recipe): Adam(lr 2e-4, default betas) — or AdamW as in the authors'
  later code base — on DFNet's fused-result loss.

Distributed training: each of PIC's four networks is wrapped in DDP on its own, because they
are stepped by two optimizers in two backward passes. E and G are reduced in the G/E backward,
D and D_rec in the D backward; in the G/E step the frozen discriminators run under ``no_sync``.
The discriminators' attention has an inner ResBlock that never runs
(docs/pic.md#discriminators-d-and-d_rec): it is found
by a probe and excluded from DDP. Checkpoints, sample grids and inference always use the
unwrapped networks (:attr:`PICTask.model`).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from .amp import Precision
from .distributed import DistInfo, no_sync, unused_parameters, wrap_ddp
from .loop import TrainTask
from .visuals import masked_input

__all__ = ["DFNetTask", "PICTask", "PIC_NETS"]

PIC_NETS = ("net_E", "net_G", "net_D", "net_D_rec")


def _compile(module: nn.Module) -> nn.Module:
    return torch.compile(module)


def _training_view(model: nn.Module, replacements: Dict[str, nn.Module]) -> nn.Module:
    """A shallow copy of ``model`` whose named submodules are replaced (e.g. by DDP wrappers).

    It shares every parameter, buffer and other submodule with ``model``, so its methods train
    ``model``; ``model`` itself keeps its plain submodules for state dicts and sampling.
    """
    view = object.__new__(type(model))
    view.__dict__.update(model.__dict__)
    modules = OrderedDict(model._modules)
    modules.update(replacements)
    view.__dict__["_modules"] = modules
    return view


class PICTask(TrainTask):
    """PIC's training step.

    Args:
        model: a :class:`~inpaint_fast.models.pic.PIC`, already on the training device.
        lr: learning rate of E+G (PIC: 1e-4). lr_d: of D+D_rec (default: ``lr``).
        betas: Adam betas of both optimizers (PIC: (0.0, 0.999)).
        compile: wrap E and G in ``torch.compile`` (not the discriminators: see :meth:`setup`).
        num_samples: completions per example in the sample grids.
    """

    name = "pic"

    def __init__(self, model: nn.Module, *, lr: float = 1e-4, lr_d: Optional[float] = None,
                 betas: Tuple[float, float] = (0.0, 0.999), compile: bool = False, num_samples: int = 3):
        self.model = model
        self.view = model
        self.compile = compile
        self.num_samples = num_samples
        self.opt_g = torch.optim.Adam(model.generator_parameters(), lr=lr, betas=betas)
        self.opt_d = torch.optim.Adam(model.discriminator_parameters(), lr=lr if lr_d is None else lr_d, betas=betas)
        self.ignored: Dict[str, List[str]] = {}

    def modules(self) -> Dict[str, nn.Module]:
        return {"model": self.model}

    def optimizers(self) -> Dict[str, torch.optim.Optimizer]:
        return {"G": self.opt_g, "D": self.opt_d}

    def _probe_loss(self, example: Dict[str, Any]) -> torch.Tensor:
        image, mask = example["image"], example["mask"]
        out = self.model.forward_train(image, mask)
        loss_d, _ = self.model.discriminator_loss(out, image)
        loss_g, _ = self.model.generator_loss(out, image, mask)
        return loss_d + loss_g

    def setup(self, info: DistInfo, example: Optional[Dict[str, Any]]) -> None:
        replacements: Dict[str, nn.Module] = {}
        if info.distributed:
            unused = unused_parameters(self.model, lambda: self._probe_loss(example))
            for name in PIC_NETS:
                prefix = name + "."
                self.ignored[name] = [n[len(prefix):] for n in unused if n.startswith(prefix)]
                replacements[name] = wrap_ddp(getattr(self.model, name), info, ignore=self.ignored[name])
        if self.compile:
            # E and G only. The discriminators run twice before each backward (real and fake), and
            # under torch.compile the spectral norm's power-iteration update of u/v then bumps the
            # version of a tensor the first call's compiled backward saved ("modified by an inplace
            # operation"). Eager discriminators are correct and cost less than E+G.
            for name in ("net_E", "net_G"):
                replacements[name] = _compile(replacements.get(name, getattr(self.model, name)))
        self.view = _training_view(self.model, replacements) if replacements else self.model

    def train(self, flag: bool = True) -> None:
        self.model.train(flag)
        if self.view is not self.model:  # the view shares the networks but has its own flag
            self.view.training = flag

    def train_step(self, batch: Dict[str, Any], precision: Precision) -> Dict[str, float]:
        image, mask = batch["image"], batch["mask"]
        view = self.view
        with precision.autocast():
            out = view.forward_train(image, mask)

        # D step: both discriminators, generator outputs detached inside discriminator_loss.
        self.model.set_discriminators_trainable(True)
        with precision.autocast():
            loss_d, logs_d = view.discriminator_loss(out, image)
        self.opt_d.zero_grad(set_to_none=True)
        precision.backward(loss_d)
        precision.step(self.opt_d)

        # G/E step against the just-updated, frozen discriminators.
        self.model.set_discriminators_trainable(False)
        try:
            with precision.autocast(), no_sync(view.net_D, view.net_D_rec):
                loss_g, logs_g = view.generator_loss(out, image, mask)
            self.opt_g.zero_grad(set_to_none=True)
            precision.backward(loss_g)
            precision.step(self.opt_g)
        finally:
            self.model.set_discriminators_trainable(True)
        precision.update()
        return {"loss_g": float(loss_g.detach()), "loss_d": float(loss_d.detach()), **logs_g, **logs_d}

    def visualize(self, batch: Dict[str, Any]) -> List[torch.Tensor]:
        image, mask = batch["image"], batch["mask"]
        generator = torch.Generator(device=image.device).manual_seed(0)  # the same z at every step
        samples = self.model.sample(image, mask, self.num_samples, generator=generator)
        return [masked_input(image, mask), *samples.unbind(1), image]


class DFNetTask(TrainTask):
    """DFNet's training step.

    Args:
        model: a :class:`~inpaint_fast.models.dfnet.DFNet` on the training device.
        loss: a :class:`~inpaint_fast.models.dfnet.DFNetLoss` (with its VGG16) on the same device.
        lr: learning rate (original recipe: 2e-4; the authors' later code base: AdamW 2e-3).
        optimizer: "adam" (default betas, the original) or "adamw".
        compile: wrap the network in ``torch.compile``.
    """

    name = "dfnet"

    def __init__(self, model: nn.Module, loss: nn.Module, *, lr: float = 2e-4, optimizer: str = "adam",
                 compile: bool = False):
        if optimizer not in ("adam", "adamw"):
            raise ValueError(f"optimizer: expected 'adam' or 'adamw', got {optimizer!r}")
        self.model = model
        self.net = model
        self.loss = loss
        self.compile = compile
        cls = torch.optim.Adam if optimizer == "adam" else torch.optim.AdamW
        self.opt = cls([p for p in model.parameters() if p.requires_grad], lr=lr)

    def modules(self) -> Dict[str, nn.Module]:
        return {"model": self.model}

    def optimizers(self) -> Dict[str, torch.optim.Optimizer]:
        return {"opt": self.opt}

    def setup(self, info: DistInfo, example: Optional[Dict[str, Any]]) -> None:
        net = wrap_ddp(self.model, info)
        self.net = _compile(net) if self.compile else net

    def train_step(self, batch: Dict[str, Any], precision: Precision) -> Dict[str, float]:
        image, mask = batch["image"], batch["mask"]
        with precision.autocast():
            results, _, _ = self.net(image * mask, mask)
            loss, logs = self.loss(results, image, mask)
        self.opt.zero_grad(set_to_none=True)
        precision.backward(loss)
        precision.step(self.opt)
        precision.update()
        return {"loss": float(loss.detach()), **logs}

    def visualize(self, batch: Dict[str, Any]) -> List[torch.Tensor]:
        image, mask = batch["image"], batch["mask"]
        results, _, raws = self.model(image * mask, mask)  # eval mode: running BN statistics
        return [masked_input(image, mask), raws[0], image * mask + results[0] * (1 - mask), image]

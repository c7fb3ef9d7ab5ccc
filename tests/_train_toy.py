"""A few-parameter inpainting task on synthetic tensors, for testing the trainer on its own,
and the worker that the 2-process DDP tests launch with ``python -m torch.distributed.run``.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/_train_toy.py TOY_OUT PIC_OUT PIC_DATA

runs the toy task, then 2 PIC steps through ``inpaint-fast train``'s code with ``--overwrite``
(PIC_OUT may hold an earlier run); every rank writes <OUT>/rank<r>.pt (its final weights) for each.
"""

import os
import sys

import torch
from torch import nn
from torch.utils.data import Dataset

from inpaint_fast.training import TrainConfig, Trainer, TrainTask
from inpaint_fast.training.distributed import wrap_ddp
from inpaint_fast.training.visuals import masked_input


class ToyDataset(Dataset):
    """``n`` fixed random 3×S×S images; each epoch draws fresh masks from (seed, epoch, index)."""

    def __init__(self, n: int = 24, size: int = 4, seed: int = 0):
        self.n, self.size, self.seed, self.epoch = n, size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        image = torch.rand(3, self.size, self.size, generator=torch.Generator().manual_seed(1000 + i))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch * 10_007 + i)
        mask = (torch.rand(1, self.size, self.size, generator=g) > 0.3).float()
        return {"image": image, "mask": mask, "path": f"toy{i}"}


class ToyTask(TrainTask):
    """Fill the holes of the masked image with a 2-layer conv net; its dropout draws from the
    global RNG, so an exact resume must restore it."""

    name = "toy"

    def __init__(self, device="cpu", lr: float = 0.02, dropout: float = 0.1):
        self.net = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Conv2d(8, 3, 1)).to(device)
        self.wrapped = self.net
        self.opt = torch.optim.Adam(self.net.parameters(), lr=lr)

    def modules(self):
        return {"net": self.net}

    def optimizers(self):
        return {"opt": self.opt}

    def setup(self, info, example):
        self.wrapped = wrap_ddp(self.net, info)

    def _forward(self, net, batch):
        image, mask = batch["image"], batch["mask"]
        return net(torch.cat([image * mask, mask], dim=1))

    def train_step(self, batch, precision):
        with precision.autocast():
            out = self._forward(self.wrapped, batch)
            loss = (out.float() - batch["image"]).abs().mean()
        self.opt.zero_grad(set_to_none=True)
        precision.backward(loss)
        precision.step(self.opt)
        precision.update()
        return {"loss": loss.item()}

    def visualize(self, batch):
        out = self._forward(self.net, batch).clamp(0, 1)
        return [masked_input(batch["image"], batch["mask"]), out, batch["image"]]


def _main(argv):
    """argv: TOY_OUT PIC_OUT PIC_DATA — the toy run, then a 2-step PIC run, in one launch."""
    from inpaint_fast.cli import build_parser
    from inpaint_fast.training.distributed import init_distributed, shutdown_distributed
    from inpaint_fast.training.run import train

    toy_out, pic_out, pic_data = argv
    torch.set_num_threads(1)
    info = init_distributed("cpu")

    torch.manual_seed(0)
    task = ToyTask(dropout=0.0)
    cfg = TrainConfig(out_dir=toy_out, steps=4, batch_size=2, log_every=1, progress=False)
    Trainer(task, ToyDataset(n=16), cfg, info).fit()
    _dump(task.net.state_dict(), toy_out, info.rank)

    args = build_parser().parse_args(
        ["train", "--model", "pic", "--data", pic_data, "--out", pic_out, "--size", "96", "--batch", "1",
         "--steps", "2", "--workers", "0", "--device", "cpu", "--sample-every", "2", "--backend", "reference",
         "--no-progress", "--overwrite"])
    trainer = train(args, info=info)
    _dump(trainer.task.modules()["model"].state_dict(), pic_out, info.rank)
    shutdown_distributed(info)


def _dump(state, out, rank):
    os.makedirs(out, exist_ok=True)
    torch.save({k: v.detach().clone() for k, v in state.items()}, os.path.join(out, f"rank{rank}.pt"))


if __name__ == "__main__":
    _main(sys.argv[1:])

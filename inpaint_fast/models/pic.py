"""Pluralistic Image Completion (PIC; Zheng, Cham, Cai, CVPR 2019) on the fused attention op.

:class:`PIC` bundles the four networks (``net_E``, ``net_G``, ``net_D``, ``net_D_rec``; see
:mod:`inpaint_fast.models.pic_blocks`) with PIC's two-path training forward, its losses and its
pluralistic sampling (docs/pic.md#two-path-training-forward, #losses, #sampling). The only change to the numbers is the
attention, which runs on :func:`inpaint_fast.short_long_attention` (no N×N map in memory).

Conventions: images in [0, 1], (B, 3, H, W); masks (B, 1, H, W), 1 = known, 0 = hole, fractional
allowed. PIC works in [-1, 1] (``img * 2 − 1`` inside). H and W must be multiples of 32 and not
both 32 (G's InstanceNorm at input/32 needs more than one position); the discriminators, hence the
losses, need H, W ≥ 96 (their last 3x3 conv has no padding).

Naming: PIC's code calls the posterior from the hole content ``p`` and the conditional prior from
the visible part ``q``; here they are ``post`` and ``prior``.
"""

from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn.spectral_norm import SpectralNormConv2d, SpectralNormConvTranspose2d
from .pic_blocks import ResDiscriminator, ResEncoder, ResGenerator
from .sizes import pic_size_problem
from .pic_checkpoint import load_pic_checkpoints

__all__ = ["PIC", "gaussian_kl", "hole_prior_sigma", "load_pic_checkpoints", "scale_pyramid"]

# v = mean(mask) − 1e-5 in PIC's get_distribution (docs/pic.md#two-path-training-forward).
_VALID_FRACTION_OFFSET = 1e-5


def hole_prior_sigma(mask: Tensor) -> Tensor:
    """PIC's hole-size-adaptive prior std σ_m(v) = 1 / (1 + exp(8 (v − 0.8))) = sigmoid(−8 (v − 0.8)).

    Args:
        mask: (B, C, H, W), 1 = known; v = its per-image mean − 1e-5 (the fraction of known pixels).

    Returns:
        (B, 1, 1, 1) std of the fixed prior N(0, σ_m²): 0.168 for no hole, 0.5 at v = 0.8,
        0.998 for an all-hole image. Larger holes → larger σ_m.
    """
    v = mask.flatten(1).mean(dim=1) - _VALID_FRACTION_OFFSET
    return (1.0 / (1.0 + torch.exp((v - 0.8) * 8.0))).view(-1, 1, 1, 1)


def gaussian_kl(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> Tensor:
    """Elementwise KL( N(μ1, σ1²) ‖ N(μ2, σ2²) ) in closed form (broadcasting).

    ``0.5 · (r + ((μ1 − μ2)/σ2)² − 1 − log r)`` with r = (σ1/σ2)², i.e.
    ``log(σ2/σ1) + (σ1² + (μ1 − μ2)²) / (2σ2²) − ½``; the same expression
    ``torch.distributions.kl_divergence`` uses for two Normals. σ's are stds (> 0).
    """
    var_ratio = (sigma1 / sigma2).pow(2)
    t1 = ((mu1 - mu2) / sigma2).pow(2)
    return 0.5 * (var_ratio + t1 - 1 - var_ratio.log())


def scale_pyramid(x: Tensor, sizes: Sequence[Tuple[int, int]]) -> List[Tensor]:
    """``x`` resized to each (h, w) in ``sizes`` by bilinear interpolation with align_corners=True.

    PIC's ``scale_pyramid`` (docs/pic.md#losses): every level is resized from the full-resolution input
    (not from the previous level); a level of x's own size is x itself.
    """
    out = []
    for h, w in sizes:
        if (h, w) == tuple(x.shape[-2:]):
            out.append(x)
        else:
            out.append(F.interpolate(x, size=(h, w), mode="bilinear", align_corners=True))
    return out


def _attention_mask(mask: Tensor, like: Tensor) -> Tensor:
    # PIC: bilinear, align_corners=True resize to f_e's size, channel 0 (docs/pic.md#the-attention-layer).
    return F.interpolate(mask, size=like.shape[-2:], mode="bilinear", align_corners=True)[:, :1]


def _standard_normal(shape: Tuple[int, ...], generator: Optional[torch.Generator], like: Tensor) -> Tensor:
    """N(0, 1) noise of ``shape`` like ``like``, drawn on the generator's device (so a CPU generator
    serves a CUDA model, and one seed gives the same z on every device), then moved."""
    device = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


def _spectral_norm_modules(*nets: nn.Module) -> List[nn.Module]:
    return [m for net in nets for m in net.modules() if isinstance(m, (SpectralNormConv2d, SpectralNormConvTranspose2d))]


def _snapshot_spectral_state(net: nn.Module) -> List[Tuple[Tensor, Tensor]]:
    """Copies of the u/v buffers of every SN conv in ``net`` (module order)."""
    return [(m.weight_u.clone(), m.weight_v.clone()) for m in _spectral_norm_modules(net)]


@torch.no_grad()
def _restore_spectral_state(net: nn.Module, state: List[Tuple[Tensor, Tensor]]) -> None:
    for m, (u, v) in zip(_spectral_norm_modules(net), state):
        m.weight_u.copy_(u)
        m.weight_v.copy_(v)


@contextlib.contextmanager
def _frozen(*nets: nn.Module) -> Iterator[None]:
    """Parameters of ``nets`` do not require grad inside; the previous flags come back on exit."""
    params = [p for net in nets for p in net.parameters()]
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


class PIC(nn.Module):
    """PIC's four networks, two-path training forward, losses and pluralistic sampling.

    Args:
        backend: backend of the three attention layers (None = the global default).
        lambda_rec: weight of the appearance (L1) losses (PIC: 20).
        lambda_kl: KL weight (PIC: 20); multiplied by ``output_scale`` (4) as PIC does → 80.
        lambda_g: adversarial weight (PIC: 1).
        **sizes: network sizes, PIC's defaults: ``ngf=32, ndf=32, z_nc=128, img_f=128, layers=5,
            L=6`` (encoder's infer_prior blocks), ``output_scale=4``.
    """

    _SIZE_KEYS = ("ngf", "ndf", "z_nc", "img_f", "layers", "L", "output_scale")

    def __init__(self, *, backend: Optional[str] = None, lambda_rec: float = 20.0, lambda_kl: float = 20.0,
                 lambda_g: float = 1.0, **sizes: int) -> None:
        super().__init__()
        unknown = sorted(set(sizes) - set(self._SIZE_KEYS))
        if unknown:
            raise TypeError(f"PIC: unknown size argument(s) {unknown}; expected some of {list(self._SIZE_KEYS)}")
        s = dict(ngf=32, ndf=32, z_nc=128, img_f=128, layers=5, L=6, output_scale=4)
        s.update(sizes)
        self.sizes = s
        self.layers = s["layers"]
        self.output_scale = s["output_scale"]
        self.lambda_rec, self.lambda_kl, self.lambda_g = float(lambda_rec), float(lambda_kl), float(lambda_g)
        self.net_E = ResEncoder(ngf=s["ngf"], z_nc=s["z_nc"], img_f=s["img_f"], layers=s["layers"], L=s["L"])
        self.net_G = ResGenerator(ngf=s["ngf"], z_nc=s["z_nc"], img_f=s["img_f"], layers=s["layers"],
                                  output_scale=s["output_scale"], backend=backend)
        self.net_D = ResDiscriminator(ndf=s["ndf"], img_f=s["img_f"], layers=s["layers"], backend=backend)
        self.net_D_rec = ResDiscriminator(ndf=s["ndf"], img_f=s["img_f"], layers=s["layers"], backend=backend)

    # ------------------------------------------------------------------ parameters
    def generator_parameters(self) -> List[nn.Parameter]:
        """Trainable parameters of E and G (PIC's optimizer_G); SN u/v are buffers, not included."""
        return [p for net in (self.net_E, self.net_G) for p in net.parameters() if p.requires_grad]

    def discriminator_parameters(self) -> List[nn.Parameter]:
        """Trainable parameters of D and D_rec (PIC's optimizer_D), including each attention's
        inner ResBlock, which never runs and so never gets a gradient (as in PIC)."""
        return [p for net in (self.net_D, self.net_D_rec) for p in net.parameters() if p.requires_grad]

    def set_discriminators_trainable(self, flag: bool) -> None:
        """``requires_grad_(flag)`` on every parameter of D and D_rec (PIC's _freeze/_unfreeze)."""
        for p in list(self.net_D.parameters()) + list(self.net_D_rec.parameters()):
            p.requires_grad_(flag)

    # ------------------------------------------------------------------ inputs
    def _check_inputs(self, image: Tensor, mask: Tensor, where: str) -> None:
        if not isinstance(image, Tensor) or image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"PIC.{where}: image must be (B, 3, H, W) in [0, 1], got "
                             f"{tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__}")
        if not isinstance(mask, Tensor) or mask.dim() != 4 or mask.shape[1] != 1 or \
                mask.shape[0] != image.shape[0] or mask.shape[2:] != image.shape[2:]:
            raise ValueError(f"PIC.{where}: mask must be (B, 1, H, W) matching image {tuple(image.shape)}, got "
                             f"{tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__}")
        problem = pic_size_problem(image.shape[2], image.shape[3], layers=self.layers)
        if problem:
            raise ValueError(f"PIC.{where}: {problem}")

    # ------------------------------------------------------------------ training
    def forward_train(self, image: Tensor, mask: Tensor, *, generator: Optional[torch.Generator] = None
                      ) -> Dict[str, Any]:
        """PIC's two-path forward (docs/pic.md#two-path-training-forward).

        Args:
            image: (B, 3, H, W) in [0, 1]; H, W multiples of 32.
            mask: (B, 1, H, W), 1 = known, 0 = hole.
            generator: RNG for the two reparameterised draws (None = torch's default RNG).

        Returns a dict with:
            ``img_rec``, ``img_g``: lists of ``output_scale`` (B, 3, h, w) images in [-1, 1], coarse →
            fine (H/8 … H for the default 4), reconstructive (z from the posterior of I_c) and
            generative (z from the conditional prior of I_m) paths;
            ``img_out``: (B, 3, H, W) in [0, 1], ``mask·image + (1 − mask)·(img_g[-1] + 1)/2``, detached;
            ``kl_rec``: (B, z_nc, h, w) KL(N(0, σ_m²) ‖ posterior); ``kl_g``: (B, z_nc, h, w)
            KL(posterior.detach() ‖ conditional prior);
            ``mu_post``, ``sigma_post``, ``mu_prior``, ``sigma_prior``: (B, z_nc, H/32, W/32);
            ``sigma_m``: (B, 1, 1, 1) hole-size-adaptive prior std.
        """
        self._check_inputs(image, mask, "forward_train")
        B = image.shape[0]
        img_truth = image * 2 - 1
        img_m = mask * img_truth
        img_c = (1 - mask) * img_truth
        (mu_post, sigma_post, mu_prior, sigma_prior), f = self.net_E(img_m, img_c)

        sigma_m = hole_prior_sigma(mask)
        kl_rec = gaussian_kl(torch.zeros_like(mu_post), sigma_m.expand_as(sigma_post), mu_post, sigma_post)
        kl_g = gaussian_kl(mu_post.detach(), sigma_post.detach(), mu_prior, sigma_prior)

        eps = _standard_normal((2,) + tuple(mu_post.shape), generator, mu_post)
        z = torch.cat([mu_post + sigma_post * eps[0], mu_prior + sigma_prior * eps[1]], dim=0)
        # Both paths decode with the I_m features (the first half of the encoder batch).
        f_m = f[-1][:B].repeat(2, 1, 1, 1)
        f_e = f[2][:B].repeat(2, 1, 1, 1)
        m_att = _attention_mask(mask, f_e[:B]).repeat(2, 1, 1, 1)
        results = self.net_G(z, f_m, f_e, m_att)
        img_rec = [r[:B] for r in results]
        img_g = [r[B:] for r in results]
        img_out = mask * image + (1 - mask) * (img_g[-1].detach() + 1) / 2
        return dict(img_rec=img_rec, img_g=img_g, img_out=img_out, kl_rec=kl_rec, kl_g=kl_g,
                    mu_post=mu_post, sigma_post=sigma_post, mu_prior=mu_prior, sigma_prior=sigma_prior,
                    sigma_m=sigma_m)

    def discriminator_loss(self, out: Dict[str, Any], image: Tensor) -> Tuple[Tensor, Dict[str, float]]:
        """LSGAN losses of D and D_rec (docs/pic.md#losses), generator outputs detached.

        ``loss_img_d = ½[MSE(D(gt), 1) + MSE(D(img_g[-1]), 0)]``, ``loss_img_d_rec`` the same with
        D_rec and img_rec[-1]. Returns ``(loss_img_d + loss_img_d_rec, {name: value})``.
        """
        img_truth = image * 2 - 1
        terms = {}
        for name, net, fake in (("loss_img_d", self.net_D, out["img_g"][-1]),
                                ("loss_img_d_rec", self.net_D_rec, out["img_rec"][-1])):
            d_real = net(img_truth)
            d_fake = net(fake.detach())
            terms[name] = 0.5 * (F.mse_loss(d_real, torch.ones_like(d_real))
                                 + F.mse_loss(d_fake, torch.zeros_like(d_fake)))
        total = terms["loss_img_d"] + terms["loss_img_d_rec"]
        return total, {k: float(v.detach()) for k, v in terms.items()}

    def generator_loss(self, out: Dict[str, Any], image: Tensor, mask: Tensor) -> Tuple[Tensor, Dict[str, float]]:
        """E+G loss: PIC's six terms with its default weights (docs/pic.md#losses).

        ``loss_kl_rec = 80·mean(kl_rec)``, ``loss_kl_g = 80·mean(kl_g)``,
        ``loss_app_rec = 20·Σ_s mean|img_rec_s − gt_s|``, ``loss_app_g = 20·Σ_s mean|m_s·img_g_s − m_s·gt_s|``
        (pyramids of gt and mask: bilinear, align_corners=True),
        ``loss_ad_g = MSE(D(img_g[-1]), 1)``, ``loss_ad_rec = MSE(D_rec(img_rec[-1]), D_rec(gt))``.
        D and D_rec run with their parameters frozen, so they get no ``.grad`` from this loss.

        Returns ``(sum of the six, {name: value})``.
        """
        img_truth = image * 2 - 1
        kl_weight = self.lambda_kl * self.output_scale
        terms = {
            "loss_kl_rec": out["kl_rec"].mean() * kl_weight,
            "loss_kl_g": out["kl_g"].mean() * kl_weight,
        }
        with _frozen(self.net_D, self.net_D_rec):
            d_fake = self.net_D(out["img_g"][-1])
            terms["loss_ad_g"] = F.mse_loss(d_fake, torch.ones_like(d_fake)) * self.lambda_g
            d_fake_rec = self.net_D_rec(out["img_rec"][-1])
            d_real_rec = self.net_D_rec(img_truth)
            terms["loss_ad_rec"] = F.mse_loss(d_fake_rec, d_real_rec) * self.lambda_g
        sizes = [tuple(r.shape[-2:]) for r in out["img_rec"]]
        gts = scale_pyramid(img_truth, sizes)
        masks = scale_pyramid(mask, sizes)
        app_rec = sum(F.l1_loss(r, gt) for r, gt in zip(out["img_rec"], gts))
        app_g = sum(F.l1_loss(g * m, gt * m) for g, gt, m in zip(out["img_g"], gts, masks))
        terms["loss_app_rec"] = app_rec * self.lambda_rec
        terms["loss_app_g"] = app_g * self.lambda_rec
        total = sum(terms.values())
        return total, {k: float(v.detach()) for k, v in terms.items()}

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, image: Tensor, mask: Tensor, k: int, *, generator: Optional[torch.Generator] = None,
               deterministic: bool = False, batch_size: Optional[int] = None,
               update_spectral_norm: bool = False) -> Tensor:
        """K completions per image from the conditional prior (docs/pic.md#sampling).

        Args:
            image: (B, 3, H, W) in [0, 1] (hole pixels are ignored); H, W multiples of 32.
            mask: (B, 1, H, W), 1 = known, 0 = hole.
            k: number of completions per image (≥ 1).
            generator: RNG for z ~ N(μ_prior, σ_prior²) (None = torch's default RNG); z is drawn as
                ``μ + σ·randn((B, K, z_nc, h, w))`` on the generator's device, so one seed gives one
                set of latents whatever device the model is on.
            deterministic: if True, z = μ_prior for every sample (all K equal).
            batch_size: decode at most this many of the B·K latents per G call (None = all).
            update_spectral_norm: PIC advances every SN conv's u/v on each call, so repeated calls
                drift; by default the u/v buffers are restored afterwards, which makes ``sample`` a
                pure function of (weights, inputs, RNG). Set True to keep PIC's update (the buffers
                advance by one power iteration for E and one for G, however many chunks are run).

        Returns:
            (B, K, 3, H, W) in [0, 1]: ``mask·image + (1 − mask)·(G(z) + 1)/2``. Pixels with mask 1
            are ``image`` exactly (composited in [0, 1], not in [-1, 1]). Every latent is decoded
            with the same SN weights, so results do not depend on ``batch_size``.
        """
        self._check_inputs(image, mask, "sample")
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"PIC.sample: k must be a positive int, got {k!r}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"PIC.sample: batch_size must be None or >= 1, got {batch_size!r}")
        B, _, H, W = image.shape
        e_state = _snapshot_spectral_state(self.net_E)
        g_state = _snapshot_spectral_state(self.net_G)
        img_m = mask * (image * 2 - 1)
        (mu, sigma), f = self.net_E(img_m)
        if deterministic:
            z = mu.unsqueeze(1).expand(B, k, *mu.shape[1:])
        else:
            eps = _standard_normal((B, k) + tuple(mu.shape[1:]), generator, mu)
            z = mu.unsqueeze(1) + sigma.unsqueeze(1) * eps
        z = z.reshape(B * k, *mu.shape[1:])
        f_m = f[-1].repeat_interleave(k, dim=0)
        f_e = f[2].repeat_interleave(k, dim=0)
        m_att = _attention_mask(mask, f[2]).repeat_interleave(k, dim=0)
        step = B * k if batch_size is None else batch_size
        outs = []
        for start in range(0, B * k, step):
            # Every chunk starts from the same u/v, hence decodes with the same effective weights.
            _restore_spectral_state(self.net_G, g_state)
            sl = slice(start, start + step)
            outs.append(self.net_G(z[sl], f_m[sl], f_e[sl], m_att[sl])[-1])
        if not update_spectral_norm:
            _restore_spectral_state(self.net_E, e_state)
            _restore_spectral_state(self.net_G, g_state)
        gen = torch.cat(outs, dim=0).view(B, k, 3, H, W)
        m = mask.unsqueeze(1)
        return m * image.unsqueeze(1) + (1 - m) * (gen + 1) / 2

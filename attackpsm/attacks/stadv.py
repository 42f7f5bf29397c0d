"""stAdv (Xiao et al., 2018) on a similarity metric: Algorithm 2, Eqs. 4-6; and stAdv+PGD."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from attackpsm.attacks import lbfgs
from attackpsm.attacks.base import (
    LINF_MAX,
    Attack,
    AttackResult,
    Threat,
    check_at_most,
    check_flip_on,
    check_int,
    check_positive,
)
from attackpsm.attacks.pgd import PGD
from attackpsm.images import saved
from attackpsm.metrics.base import Metric, select
from attackpsm.protocol.stats import perturbation_stats
from attackpsm.protocol.twoafc import rank_flipped

VARIANTS = ("paper", "official")
REFERENCE_SIZE = 64  # the paper's image side (Sec. 4): alpha and beta are its weights there
FLOW_EPS = 1e-8  # keeps the flow loss differentiable at zero flow (Xiao et al.'s code)


def warp(images: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Backward warp with bilinear interpolation (Jaderberg et al., 2015).

    ``out[:, :, i, j] = images`` sampled at ``(i + flow[:, 1, i, j], j + flow[:, 0, i, j])``
    (``flow[:, 0]``: horizontal displacement ``u``, ``flow[:, 1]``: vertical ``v``, in
    pixels); coordinates are clamped to the image. Differentiable in ``flow``; a zero flow
    returns ``images`` bit for bit (the interpolation weights are exactly 0 and 1).
    """
    n, c, h, w = images.shape
    if h < 2 or w < 2:
        raise ValueError(f"stAdv needs images of at least 2x2 pixels, got {h}x{w}")
    ys = torch.arange(h, device=images.device, dtype=flow.dtype)[:, None]
    xs = torch.arange(w, device=images.device, dtype=flow.dtype)[None, :]
    gx = (xs + flow[:, 0]).clamp(0, w - 1)
    gy = (ys + flow[:, 1]).clamp(0, h - 1)
    x0 = gx.detach().floor().clamp(max=w - 2)
    y0 = gy.detach().floor().clamp(max=h - 2)
    wx = (gx - x0)[:, None]
    wy = (gy - y0)[:, None]
    i00 = (y0.long() * w + x0.long()).flatten(1)
    flat = images.flatten(2)

    def corner(offset: int) -> torch.Tensor:
        index = (i00 + offset)[:, None, :].expand(n, c, h * w)
        return torch.gather(flat, 2, index).view(n, c, h, w)

    top = corner(0) * (1 - wx) + corner(1) * wx
    bottom = corner(w) * (1 - wx) + corner(w + 1) * wx
    return top * (1 - wy) + bottom * wy


def flow_loss(flow: torch.Tensor, variant: str = "paper") -> torch.Tensor:
    """Eq. 5, one value per sample: smoothness of the flow over neighbouring pixels.

    ``paper``: ``Σ_p Σ_{q ∈ 4-neighbours} sqrt((u_p-u_q)² + (v_p-v_q)² + 1e-8)``.
    ``official``: ``Σ_p Σ_{q ∈ 4 diagonal neighbours} ((u_p-u_q)² + (v_p-v_q)² + 1e-8)``.
    Both pad the flow with zeros at the border, as Xiao et al.'s implementation does.
    """
    padded = F.pad(flow, (1, 1, 1, 1))
    if variant == "paper":
        shifts = [
            padded[:, :, 1:-1, 2:],
            padded[:, :, 1:-1, :-2],
            padded[:, :, 2:, 1:-1],
            padded[:, :, :-2, 1:-1],
        ]
    else:
        shifts = [
            padded[:, :, 2:, 2:],
            padded[:, :, 2:, :-2],
            padded[:, :, :-2, 2:],
            padded[:, :, :-2, :-2],
        ]
    total = flow.new_zeros(flow.shape[0])
    for q in shifts:
        sq = (flow - q).pow(2).sum(1) + FLOW_EPS
        total = total + (sq.sqrt() if variant == "paper" else sq).sum(dim=(1, 2))
    return total


def rank_term(s_other: torch.Tensor, s_adv: torch.Tensor, variant: str = "paper") -> torch.Tensor:
    """Eq. 6: ``(s_other / (s_other + s_adv))^2``; ``official``: without the square."""
    ratio = s_other / (s_other + s_adv)
    return ratio**2 if variant == "paper" else ratio


class StAdv(Attack):
    """Spatially transformed adversarial images (Xiao et al., 2018) -- Algorithm 2.

    Distance measure: flow smoothness (Eq. 5); the image is a bilinear backward warp of the
    prey, so no pixel value leaves the range of its neighbours. Each triplet's flow starts
    at zero and L-BFGS minimises ``α·L_rank + β·L_flow`` (Eq. 4); the loss is 0 once the
    rank flips, and a triplet whose accepted iterate flips stops there: its flow never
    changes again. Each triplet runs its own scipy L-BFGS-B (as the reference code does)
    and all triplets' function evaluations are batched
    (:func:`attackpsm.attacks.lbfgs.minimize`), so a batched run equals one-at-a-time runs.

    Variants (the paper vs its released code): ``paper`` (default): Eq. 6 squared, Eq. 5 with square roots
    over the 4-neighbours, 250 iterations. ``official``: the released code's unsquared
    ``L_rank``, squared differences to the 4 diagonal neighbours, 50 iterations.

    Per-triplet columns: ``iterations`` (L-BFGS iterations), ``evaluations`` (metric
    forward+backward passes), ``flow_max`` / ``flow_mean`` (largest / mean displacement
    length in pixels).

    Args:
        alpha: weight of ``L_rank`` (50; Table 8 also uses 200 and 1000).
        beta: weight of ``L_flow`` (0.05).
        max_iterations: L-BFGS iterations (``None``: 250 for ``paper``, 50 for ``official``).
        variant: ``paper`` or ``official``.
        history: L-BFGS memory (10, scipy's default).
        max_line_search: line-search evaluations per iteration (20, scipy's default).
        reference_size: the image side at which ``α`` and ``β`` are the paper's (64, the
            size of its experiments). At ``H x W`` above it the flow is optimised in units
            of ``sqrt(HW)/64`` pixels and ``L_rank`` weighted by ``α·HW/64²``
            (:meth:`loss`), so that the same triplets move and flip at 256 and 512 px as at
            64 px; at 64 px and below nothing changes. ``None``: Eq. 4 in pixels at every
            size (at 256 px most triplets then stop at a zero flow).
        flip_on: ``"float"`` (the paper) or ``"saved"``: the loss is 0 and the triplet stops
            only once the saved 8-bit image of its iterate flips (:func:`attackpsm.images.saved`).

    Example:
        >>> result = StAdv(alpha=50, beta=0.05).run(metric, metric.prepare(ref), prey, s_other)
        >>> result.columns["flow_max"]
    """

    name = "stadv"
    columns = ("iterations", "evaluations", "flow_max", "flow_mean")
    threat = Threat(norm="flow", access="white-box")
    family = "stadv"

    def __init__(
        self,
        alpha: float = 50.0,
        beta: float = 0.05,
        max_iterations: int | None = None,
        variant: str = "paper",
        history: int = 10,
        max_line_search: int = 20,
        reference_size: int | None = REFERENCE_SIZE,
        flip_on: str = "float",
    ):
        self.flip_on = check_flip_on(flip_on)
        if variant not in VARIANTS:
            raise ValueError(f"stAdv variant must be one of {list(VARIANTS)}, got {variant!r}")
        check_positive("alpha", alpha)
        check_positive("beta", beta, allow_zero=True)
        if max_iterations is None:
            max_iterations = 250 if variant == "paper" else 50
        check_int("max_iterations", max_iterations, minimum=0)
        check_int("history", history, minimum=1)
        check_int("max_line_search", max_line_search, minimum=1)
        if reference_size is not None:
            check_int("reference_size", reference_size, minimum=1)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.max_iterations = int(max_iterations)
        self.variant = variant
        self.history = int(history)
        self.max_line_search = int(max_line_search)
        self.reference_size = None if reference_size is None else int(reference_size)

    def flow_unit(self, height: int, width: int) -> float:
        """Pixels per unit of the optimised flow: ``max(1, sqrt(HW) / reference_size)``.

        Above ``reference_size`` pixels a side L-BFGS works on the flow in units of
        ``1/reference_size`` of the image side (a pixel at the paper's 64x64), so a step of
        the variable moves the image by the same fraction at every size. At or below it
        (and with ``reference_size=None``) the unit is one pixel and the loss is Eq. 4 as
        written: there each pixel's gradient is at least as large as at 64 px and L-BFGS
        moves without help (at 32 px scaling down flipped 2 of 6 calibrated triplets where
        Eq. 4 flips 4, as many as at 64 px).
        """
        if self.reference_size is None:
            return 1.0
        return max(1.0, math.sqrt(height * width) / float(self.reference_size))

    def rank_weight(self, height: int, width: int) -> float:
        """The weight of ``L_rank`` at ``height x width``: ``α · flow_unit²`` (``α · HW /
        reference_size²`` above ``reference_size``, ``α`` at or below it).

        ``L_flow`` (Eq. 5) sums over the ``HW`` pixels while ``L_rank`` (Eq. 6) is one
        number per image; weighting ``L_rank`` by the pixel count keeps the two terms in the
        proportion they have at ``reference_size`` pixels a side, where it is ``α``.
        """
        return self.alpha * self.flow_unit(height, width) ** 2

    def loss(self, flow: torch.Tensor, s_other: torch.Tensor, s_adv: torch.Tensor) -> torch.Tensor:
        """Eq. 4 per sample (before the "0 once flipped" rule) for a flow in pixels.

        At ``reference_size`` pixels a side this is Eq. 4 as written. At another size
        ``L_flow`` is taken on the flow in units of :meth:`flow_unit` and ``L_rank`` weighted
        by :meth:`rank_weight`, so that the balance of the two terms and the size of the
        gradient that scipy's tolerances (``gtol``, ``ftol``) test keep the scale they have
        at the paper's size. With Eq. 4 in pixels, L-BFGS stops at or next to its zero
        start at 256 px and above, without a flip.
        """
        h, w = flow.shape[-2:]
        unit = self.flow_unit(h, w)
        return self.rank_weight(h, w) * rank_term(s_other, s_adv, self.variant) + self.beta * (
            flow_loss(flow / unit, self.variant)
        )

    def optimize_flow(
        self, metric: Metric, prepared_ref: Any, prey: torch.Tensor, s_other: torch.Tensor
    ) -> lbfgs.LBFGSResult:
        """Run L-BFGS on the flows; ``result.x`` holds them ``(N, 2·H·W)`` in units of
        :meth:`flow_unit` pixels."""
        n, _, h, w = prey.shape
        prey = prey.detach()
        unit = self.flow_unit(h, w)

        def fg(x: torch.Tensor, rows: torch.Tensor):
            x = x.view(-1, 2, h, w).detach().requires_grad_(True)
            with torch.enable_grad():
                flow = x * unit
                s = metric.score(select(prepared_ref, rows), warp(prey[rows], flow))
                loss = self.loss(flow, s_other[rows], s)
                (grad,) = torch.autograd.grad(loss.sum(), x)
            flipped = rank_flipped(s.detach(), s_other[rows], self.reverse)
            if self.flip_on == "saved":  # the stop rule judges the saved 8-bit iterate
                with torch.no_grad():
                    image = saved(warp(prey[rows], flow.detach()))
                    s_saved = metric.score(select(prepared_ref, rows), image)
                flipped = rank_flipped(s_saved, s_other[rows], self.reverse)
            loss = torch.where(flipped, torch.zeros_like(loss), loss)  # Alg. 2, line 7
            return loss.detach(), grad.flatten(1), flipped

        x0 = torch.zeros(n, 2 * h * w, device=prey.device, dtype=prey.dtype)
        return lbfgs.minimize(
            fg, x0, self.max_iterations, history=self.history, max_line_search=self.max_line_search
        )

    def run(
        self, metric: Metric, prepared_ref: Any, prey: torch.Tensor, s_other: torch.Tensor
    ) -> AttackResult:
        n, _, h, w = prey.shape
        opt = self.optimize_flow(metric, prepared_ref, prey, s_other)
        flow = opt.x.view(n, 2, h, w) * self.flow_unit(h, w)
        with torch.no_grad():
            adv = warp(prey, flow)
            s_adv = metric.score(prepared_ref, adv)
        length = flow.pow(2).sum(1).sqrt().flatten(1)
        columns = {
            "iterations": opt.iterations,
            "evaluations": opt.evaluations,
            "flow_max": length.amax(1),
            "flow_mean": length.mean(1),
        }
        return AttackResult(
            adv,
            s_adv,
            rank_flipped(s_adv, s_other, self.reverse),
            columns,
            (opt.status == lbfgs.STOPPED).to(adv.device) if self.flip_on == "saved" else None,
        )


class StAdvPGD(StAdv):
    """stAdv followed by a fixed number of PGD steps (Sec. 4.2, Table 5: stAdv + PGD(k)).

    Distance measure: the stAdv flow, then ℓ∞ ``pgd_eps`` around the stAdv image. PGD runs
    exactly ``pgd_steps`` sign steps of Eq. 1 with no early stop on every triplet; the
    result is judged on the final image. ``center="prey"`` projects onto the ε-ball around
    the original prey instead, as the released code did.

    Extra per-triplet columns: ``stadv_flipped`` and ``stadv_rmse`` (the stAdv stage; RMSE
    between the 8-bit images as in the paper, see :mod:`attackpsm.protocol.stats`).

    Args:
        pgd_steps: PGD steps (10; Table 5 uses 5, 10, 15, 20).
        pgd_eps: ℓ∞ budget of the PGD stage (0.03).
        pgd_alpha: PGD step size (0.001).
        center: ``stadv`` (default) or ``prey``: the centre of the ε-ball.
        **stadv: :class:`StAdv` arguments (``alpha``, ``beta``, ``max_iterations``, ``variant``, ...).

    Example:
        >>> result = StAdvPGD(pgd_steps=10).run(metric, metric.prepare(ref), prey, s_other)
    """

    name = "stadv_pgd"
    columns = (*StAdv.columns, "stadv_flipped", "stadv_rmse")
    threat = Threat(norm="flow+linf", access="white-box", budget="pgd_eps")
    family = "stadv_pgd"

    def __init__(
        self,
        pgd_steps: int = 10,
        pgd_eps: float = 0.03,
        pgd_alpha: float = 0.001,
        center: str = "stadv",
        **stadv: Any,
    ):
        super().__init__(**stadv)
        if center not in ("stadv", "prey"):
            raise ValueError(f"stadv_pgd center must be 'stadv' or 'prey', got {center!r}")
        check_int("pgd_steps", pgd_steps, minimum=0)
        check_positive("pgd_eps", pgd_eps, allow_zero=True)
        check_positive("pgd_alpha", pgd_alpha)
        check_at_most("pgd_eps", pgd_eps, LINF_MAX, "the width of the [-1, 1] image scale")
        check_at_most("pgd_alpha", pgd_alpha, LINF_MAX, "the width of the [-1, 1] image scale")
        self.pgd_steps = int(pgd_steps)
        self.pgd_eps = float(pgd_eps)
        self.pgd_alpha = float(pgd_alpha)
        self.center = center
        self._pgd = PGD(eps=pgd_eps, alpha=pgd_alpha, max_iterations=pgd_steps, early_stop=False)

    def run(
        self, metric: Metric, prepared_ref: Any, prey: torch.Tensor, s_other: torch.Tensor
    ) -> AttackResult:
        st = super().run(metric, prepared_ref, prey, s_other)
        center = st.adv if self.center == "stadv" else prey
        out = self._pgd.attack(metric, prepared_ref, center, s_other, start=st.adv)
        columns = {
            **st.columns,
            "stadv_flipped": st.flipped,
            "stadv_rmse": perturbation_stats(st.adv, prey)["rmse_uint8"],
        }
        return AttackResult(out.adv, out.s_adv, out.flipped, columns)

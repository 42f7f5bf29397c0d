"""PGD on a similarity metric (Madry et al., 2018; the paper's Algorithm 1, Eq. 2) and its
reverse (Appendix F, Eq. 7)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from attackpsm.attacks.base import (
    LINF_MAX,
    Attack,
    AttackResult,
    Threat,
    check_at_most,
    check_flip_on,
    check_int,
    check_positive,
    judge,
)
from attackpsm.images import HIGH, LOW
from attackpsm.metrics.base import Metric, select
from attackpsm.protocol.twoafc import rank_flipped, rank_loss, reverse_rank_loss

log = logging.getLogger("attackpsm")


class PGD(Attack):
    """ℓ∞ PGD with a sign step on Eq. 1 and per-triplet early stopping (Algorithm 1).

    Distance measure: ℓ∞ on the ``[-1, 1]`` scale. For ``k = 0 .. max_iterations - 1``
    (30 checks by default, as the released loop's ``range(30)``; ``checks=31`` gives
    Algorithm 1's ``k = 0 .. 30``): ``I_adv = clip(I_prey + δ, -1, 1)``; stop this triplet
    if ``s_adv > s_other``; otherwise step ``I_adv + α·sign(∇J)`` and project ``δ`` onto
    ``[-ε, ε]``. The last check judges the image after ``checks - 1`` steps. Batched over
    triplets: a flipped triplet is frozen -- it keeps the image, score and check index
    ``k`` (``iterations``) that flipped it.

    ``flip_on="saved"`` stops a triplet only when the 8-bit image it would save flips
    (:func:`attackpsm.images.saved`) and otherwise goes on within the budget; the returned
    ``flipped`` is still the float image's flip. On a randomised metric every check scores
    under the triplet's common draws, apart from the gradient's own draws.

    How the batch is executed (docs/performance.md, "PGD execution modes"); every setting gives the same
    per-triplet results on the CPU:

    * ``compact_every=1`` (default): finished triplets leave the batch after every step, so
      later steps compute only on the triplets still being attacked.
    * ``compact_every=k``: the batch is compacted every ``k`` steps; in between, finished
      triplets stay in it, frozen by a mask. ``0``/``None``: never (fixed shapes).
    * ``check_every=k``: the early-stop test "is any triplet still being attacked?" (a
      host synchronisation) runs every ``k`` steps; ``0``/``None``: never. Any value but
      ``1`` also skips the metric's per-call input-range check (one more synchronisation;
      the candidate is clipped to ``[-1, 1]`` by Alg. 1 itself), so with
      ``compact_every=0, check_every=0`` the loop never waits for the device.
    * ``compile``: ``torch.compile`` the metric's score (its forward and, through
      AOTAutograd, its backward); ``True`` or a ``torch.compile`` mode
      (``"reduce-overhead"``: CUDA graphs). Opt-in; if compiling fails the attack logs why
      and continues eagerly.

    Args:
        eps: ℓ∞ budget on the ``[-1, 1]`` scale (0.03).
        alpha: step size (0.001; Table 11 also uses 0.00375 and 0.006).
        max_iterations: gradient steps (30).
        checks: flip checks (``None``: ``max_iterations``, the released loop's 30 checks
            of which the last judges the image after 29 steps; ``max_iterations + 1``:
            Algorithm 1's 31, the last after all ``max_iterations`` steps).
        early_stop: stop each triplet at its first flip (Alg. 1). ``False`` runs exactly
            ``max_iterations`` steps and judges the final image -- PGD(10), PGD(20) of the
            transfer study (Table 5).
        flip_on: ``"float"`` (the paper) or ``"saved"``: what the early stop judges.
        compact_every: drop finished triplets from the batch every this many steps.
        check_every: test for "all finished" every this many steps.
        compile: ``False``, ``True`` or a ``torch.compile`` mode.

    Example:
        >>> result = PGD(eps=0.03).run(metric, metric.prepare(ref), prey, s_other)
        >>> fixed = PGD(compact_every=0, check_every=0)  # fixed shapes, no host sync
    """

    name = "pgd"
    columns = ("iterations",)
    threat = Threat(norm="linf", access="white-box", budget="eps")
    family = "pgd"

    def __init__(
        self,
        eps: float = 0.03,
        alpha: float = 0.001,
        max_iterations: int = 30,
        checks: int | None = None,
        early_stop: bool = True,
        flip_on: str = "float",
        compact_every: int | None = 1,
        check_every: int | None = 1,
        compile: bool | str = False,
    ):
        check_positive("eps", eps, allow_zero=True)
        check_positive("alpha", alpha)
        check_at_most("eps", eps, LINF_MAX, "the width of the [-1, 1] image scale")
        check_at_most("alpha", alpha, LINF_MAX, "the width of the [-1, 1] image scale")
        check_int("max_iterations", max_iterations, minimum=0)
        if checks is not None:
            check_int("checks", checks, minimum=1)
            if checks > max_iterations + 1:
                raise ValueError(
                    f"attack parameter checks must be <= max_iterations + 1 = "
                    f"{max_iterations + 1} (one check per image), got {checks}"
                )
        for key, value in (("compact_every", compact_every), ("check_every", check_every)):
            if value is not None:
                check_int(key, value, minimum=0, note="0 or None: never")
        if compile not in COMPILE_MODES:
            raise ValueError(
                f"attack parameter compile must be one of {list(COMPILE_MODES)}, got {compile!r}"
            )
        self.eps = float(eps)
        self.alpha = float(alpha)
        self.max_iterations = int(max_iterations)
        self.checks = None if checks is None else int(checks)
        self.early_stop = bool(early_stop)
        self.flip_on = check_flip_on(flip_on)
        self.compact_every = int(compact_every or 0)
        self.check_every = int(check_every or 0)
        self.compile = compile
        self._compiled: dict[int, _CompiledScore] = {}

    @property
    def n_checks(self) -> int:
        """Flip checks made: ``checks``; by default ``max_iterations`` with the early stop
        (the released loop) and ``max_iterations + 1`` without (judge after every step)."""
        if self.checks is not None:
            return self.checks
        return self.max_iterations if self.early_stop else self.max_iterations + 1

    def loss(self, s_other: torch.Tensor, s_adv: torch.Tensor) -> torch.Tensor:
        """The objective that each sign step increases (Eq. 1)."""
        return rank_loss(s_other, s_adv)

    def run(
        self, metric: Metric, prepared_ref: Any, prey: torch.Tensor, s_other: torch.Tensor
    ) -> AttackResult:
        return self.attack(metric, prepared_ref, prey, s_other)

    @property
    def compile_errors(self) -> list[str]:
        """Why ``torch.compile`` fell back to eager execution, per metric (empty: it did not)."""
        return [c.error for c in self._compiled.values() if c.error]

    def _scorer(self, metric: Metric) -> Callable[[Any, torch.Tensor], torch.Tensor]:
        """``metric.score``; :meth:`~attackpsm.metrics.base.Metric.score_unchecked` when host
        syncs are avoided (the input-range check reads a device value); compiled when asked."""
        score = metric.score
        if self.check_every != 1 or self.compile is not False:
            score = metric.score_unchecked  # the candidate is clipped to [-1, 1] by Alg. 1
        if self.compile is False:
            return score
        if id(metric) not in self._compiled:
            self._compiled[id(metric)] = _CompiledScore(score, self.compile, metric.name)
        return self._compiled[id(metric)]

    def attack(
        self,
        metric: Metric,
        prepared_ref: Any,
        center: torch.Tensor,
        s_other: torch.Tensor,
        start: torch.Tensor | None = None,
    ) -> AttackResult:
        """PGD in the ε-ball around ``center``, starting at ``start`` (default: ``center``).

        ``start`` differs from ``center`` only in stAdv+PGD with ``center=prey`` (the
        official code's projection around the original prey).
        """
        start = center if start is None else start
        checks = max(self.n_checks, 1)
        out = _Outcome(start, checks)
        score = self._scorer(metric)
        # a separate judgement: a randomised metric decides under its common draws, not the
        # gradient's; flip_on=saved judges the 8-bit image
        separate = metric.stochastic or self.flip_on == "saved"
        # not clipped: an outside start is projected at the first step
        work = _Working(prepared_ref, center, s_other, start - center, self.compact_every == 1)
        for k in range(checks):
            last = k == checks - 1
            x = (work.center + work.delta).clamp(LOW, HIGH)
            x.requires_grad_(not last)
            with torch.set_grad_enabled(not last):
                s = score(work.ref, x)
            if separate:
                # without a gradient (the last check) s already is the decision score
                stochastic = metric.stochastic and not last
                hit, s_det = judge(
                    score, work.ref, x, work.s_other, self.reverse, self.flip_on, s, stochastic
                )
            else:
                s_det = s.detach()
                hit = rank_flipped(s_det, work.s_other, self.reverse)
            if last:
                done = work.live  # the budget is spent
            elif self.early_stop:
                done = work.live & hit
            else:
                done = torch.zeros_like(work.live)
            out.record(work, done, x, s_det, hit, k, self.reverse)
            work.live = work.live & ~done
            if last or (_due(self.check_every, k) and not work.live.any()):
                break
            self._step(work, x, s)
            if _due(self.compact_every, k):  # drop the frozen triplets (a host sync)
                work.compact()
                if work.idx.numel() == 0:
                    break
        return out.result(self.flip_on)

    def _step(self, work: _Working, x: torch.Tensor, s: torch.Tensor) -> None:
        """One sign step of the live triplets on the loss, projected onto the ε-ball."""
        loss = self.loss(work.s_other, s).sum()
        (grad,) = torch.autograd.grad(loss, x)
        stepped = x.detach() + self.alpha * grad.sign()
        work.delta = torch.where(
            work.live[:, None, None, None],
            (stepped - work.center).clamp(-self.eps, self.eps),
            work.delta,
        )


def _due(every: int, k: int) -> bool:
    """Step ``k`` ends a period of ``every`` steps (``0``: never)."""
    return every > 0 and (k + 1) % every == 0


class _Working:
    """PGD's working batch: the triplets ``idx`` of the input (``None``: all, in order).

    ``live`` marks those still being attacked; the others are frozen until the next
    compaction drops them (:meth:`compact`).
    """

    def __init__(
        self,
        prepared_ref: Any,
        center: torch.Tensor,
        s_other: torch.Tensor,
        delta: torch.Tensor,
        compact: bool,
    ):
        self.full = (prepared_ref, center, s_other)
        self.idx: torch.Tensor | None = None
        self.ref, self.center, self.s_other = prepared_ref, center, s_other
        self.delta = delta
        n = center.shape[0]
        self.live = torch.ones(n, dtype=torch.bool, device=center.device)
        if compact:  # compacted from the start, as at every later step
            self.idx = torch.arange(n, device=center.device)
            self.ref = select(prepared_ref, self.idx)

    def get(self, full: torch.Tensor) -> torch.Tensor:
        """The working rows of a tensor over the whole input."""
        return full if self.idx is None else full[self.idx]

    def put(self, full: torch.Tensor, value: torch.Tensor) -> None:
        """Write ``value`` into the working rows of a tensor over the whole input."""
        if self.idx is None:
            full.copy_(value)
        else:
            full[self.idx] = value

    def compact(self) -> None:
        """Drop the frozen triplets from the working batch (reads ``live``: a host sync)."""
        prepared_ref, center, s_other = self.full
        n = center.shape[0]
        self.idx = (torch.arange(n, device=center.device) if self.idx is None else self.idx)[
            self.live
        ]
        self.delta, self.live = self.delta[self.live], self.live[self.live]
        self.ref = select(prepared_ref, self.idx)
        self.center, self.s_other = center[self.idx], s_other[self.idx]


class _Outcome:
    """Per input triplet, what PGD returns: filled with masked writes (no host sync)."""

    def __init__(self, start: torch.Tensor, checks: int):
        n, device = start.shape[0], start.device
        self.adv = start.clone()
        self.s_adv = torch.full((n,), float("nan"), device=device)
        self.flipped = torch.zeros(n, dtype=torch.bool, device=device)
        self.stopped = torch.zeros(n, dtype=torch.bool, device=device)
        self.iterations = torch.full((n,), checks - 1, dtype=torch.long, device=device)

    def record(
        self,
        work: _Working,
        done: torch.Tensor,
        x: torch.Tensor,
        s_det: torch.Tensor,
        hit: torch.Tensor,
        k: int,
        reverse: bool,
    ) -> None:
        """Keep the image, score and check index ``k`` of the triplets ``done`` at ``k``."""
        put, get = work.put, work.get
        put(self.adv, torch.where(done[:, None, None, None], x.detach(), get(self.adv)))
        put(self.s_adv, torch.where(done, s_det.to(self.s_adv.dtype), get(self.s_adv)))
        put(self.iterations, torch.where(done, k, get(self.iterations)))
        flipped = rank_flipped(s_det, work.s_other, reverse)
        put(self.flipped, torch.where(done, flipped, get(self.flipped)))
        put(self.stopped, torch.where(done, hit, get(self.stopped)))

    def result(self, flip_on: str) -> AttackResult:
        """The attack's result; ``stopped`` only where the stop rule was the saved image's."""
        return AttackResult(
            self.adv,
            self.s_adv,
            self.flipped,
            {"iterations": self.iterations},
            self.stopped if flip_on == "saved" else None,
        )


# `PGD(compile=...)`: off, on (torch.compile's default mode), or a torch.compile mode
COMPILE_MODES = (
    False,
    True,
    "default",
    "reduce-overhead",
    "max-autotune",
    "max-autotune-no-cudagraphs",
)


class _CompiledScore:
    """A metric's score under ``torch.compile``, falling back to eager if compiling fails.

    Compiling happens at the first call (forward and backward, the latter on a probe) and
    again at a new input shape (the forward at once, the backward when first used); an
    error in a compiled forward or in the first backward is logged once, with its reason,
    and every later call runs eagerly. Running out of device memory is not a compile
    error: it propagates (the engine halves the batch).
    """

    def __init__(self, score: Callable, mode: bool | str, metric_name: str):
        self.eager = score
        self.mode = "default" if mode is True else mode
        self.metric_name = metric_name
        self.error: str | None = None
        self.checked = False  # a backward through the compiled graph has run
        self.compiled = torch.compile(score, mode=self.mode)

    def __call__(self, prepared: Any, x: torch.Tensor) -> torch.Tensor:
        if self.error is not None:
            return self.eager(prepared, x)
        try:
            if not self.checked and x.requires_grad:
                # compile the backward now, on a probe of its own, rather than mid-step (a
                # compiled backward runs once per graph: no retained graph to reuse)
                probe = x.detach().clone().requires_grad_(True)
                torch.autograd.grad(self._compiled(prepared, probe).sum(), probe)
                self.checked = True
            return self._compiled(prepared, x)
        except torch.OutOfMemoryError:
            raise
        except Exception as error:  # noqa: BLE001 -- any compiler failure: run eagerly
            first_line = (str(error).strip().splitlines() or [""])[0]
            self.error = f"{type(error).__name__}: {first_line}"
            log.warning(
                "torch.compile (mode=%s) of metric %r failed, running it eagerly: %s",
                self.mode,
                self.metric_name,
                self.error,
            )
            return self.eager(prepared, x)

    def _compiled(self, prepared: Any, x: torch.Tensor) -> torch.Tensor:
        if self.mode in ("reduce-overhead", "max-autotune") and x.is_cuda:
            torch.compiler.cudagraph_mark_step_begin()  # CUDA graphs: a new iteration
            return self.compiled(prepared, x).clone()  # the graph's output is reused
        return self.compiled(prepared, x)


class ReversePGD(PGD):
    """Reverse PGD (Appendix F, Table 12): make the *less* similar distortion more similar.

    The engine hands this attack the distortion the metric ranks *farther* from the
    reference; each sign step increases Eq. 7, ``(s_other / (s_other + s_adv))^2``, and a
    triplet succeeds when ``s_adv < s_other``. Same budget and schedule as :class:`PGD`
    (the paper: ε = 0.03, α = 0.001, 30 iterations); the official code used ``eps=0.1``
    and ``max_iterations=50``.

    Example:
        >>> attack = ReversePGD(eps=0.1, max_iterations=50)  # the official code's setting
    """

    name = "pgd_reverse"
    reverse = True
    threat = Threat(norm="linf", access="white-box", budget="eps", reverse=True)
    family = "pgd_reverse"

    def loss(self, s_other: torch.Tensor, s_adv: torch.Tensor) -> torch.Tensor:
        return reverse_rank_loss(s_other, s_adv)

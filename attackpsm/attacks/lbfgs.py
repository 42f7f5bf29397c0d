"""Batched L-BFGS: many independent problems optimised side by side.

stAdv (Algorithm 2) minimises one loss per triplet with L-BFGS (Liu & Nocedal, 1989).
Running the triplets as one big problem (``torch.optim.LBFGS`` on the batch) would couple
them through shared inner products and a shared line search, so a batched run would not
equal one-at-a-time runs and a finished triplet's variables would keep moving. Here every
problem keeps its own curvature history, step length and stopping state; only the function
evaluations are batched.

The update is the standard two-loop recursion with ``history`` pairs and the initial
Hessian scaling ``γ = sᵀy / yᵀy``; the step is chosen by backtracking until the Armijo
condition ``f(x + t·d) ≤ f(x) + c1·t·∇fᵀd`` holds (first iteration: ``t = min(1, 1/‖∇f‖₁)``,
as in ``torch.optim.LBFGS``). A pair is stored only when ``sᵀy > 1e-10``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

# fg(x (m, D), rows (m,)) -> (loss (m,), grad (m, D), stop (m,) bool): evaluate the problems
# ``rows`` at ``x``; ``stop`` ends a problem at that point (stAdv: the rank flipped).
Objective = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]

# why a problem stopped
RUNNING, STOPPED, CONVERGED, MAX_ITER, LINE_SEARCH_FAILED = 0, 1, 2, 3, 4


@dataclass
class LBFGSResult:
    """Per-problem outcome: final point, loss, iterations, evaluations, status, loss trace."""

    x: torch.Tensor
    loss: torch.Tensor
    iterations: torch.Tensor
    evaluations: torch.Tensor
    status: torch.Tensor
    trace: list[torch.Tensor]  # trace[k][i]: loss of problem i after iteration k


def _two_loop(
    g: torch.Tensor,
    s: torch.Tensor,
    y: torch.Tensor,
    rho: torch.Tensor,
    count: torch.Tensor,
    head: torch.Tensor,
) -> torch.Tensor:
    """``H·g`` for each problem from its ring buffer of (s, y) pairs (newest at ``head - 1``)."""
    m_hist = s.shape[1]
    q = g.clone()
    alphas = []
    order = [(head - 1 - j) % m_hist for j in range(m_hist)]  # newest first
    rows = torch.arange(g.shape[0], device=g.device)
    for j, slot in enumerate(order):
        use = (j < count).to(g.dtype)
        s_j, y_j, rho_j = s[rows, slot], y[rows, slot], rho[rows, slot]
        a = use * rho_j * (s_j * q).sum(1)
        q = q - a[:, None] * y_j
        alphas.append((a, slot, use))
    newest = (head - 1) % m_hist
    s_n, y_n = s[rows, newest], y[rows, newest]
    yy = (y_n * y_n).sum(1)
    gamma = torch.where(count > 0, (s_n * y_n).sum(1) / yy.clamp_min(1e-30), torch.ones_like(yy))
    r = gamma[:, None] * q
    for a, slot, use in reversed(alphas):
        s_j, y_j, rho_j = s[rows, slot], y[rows, slot], rho[rows, slot]
        b = use * rho_j * (y_j * r).sum(1)
        r = r + (a - b)[:, None] * s_j * use[:, None]
    return r


def minimize(
    fg: Objective,
    x0: torch.Tensor,
    max_iterations: int,
    history: int = 10,
    max_line_search: int = 20,
    c1: float = 1e-4,
    tolerance_grad: float = 1e-5,
    tolerance_change: float = 1e-9,
) -> LBFGSResult:
    """Minimise ``n`` independent problems ``x0 (n, D)`` with per-problem L-BFGS.

    A problem ends when ``fg`` says stop (its point is kept as is), when ``‖∇f‖∞ ≤
    tolerance_grad``, when an accepted step changes the loss by less than
    ``tolerance_change``, when no step passes the line search, or after ``max_iterations``.
    """
    n, dim = x0.shape
    device, dtype = x0.device, x0.dtype
    x = x0.clone()
    all_rows = torch.arange(n, device=device)
    f, g, stop = fg(x, all_rows)
    evaluations = torch.ones(n, dtype=torch.long, device=device)
    iterations = torch.zeros(n, dtype=torch.long, device=device)
    status = torch.where(stop, STOPPED, RUNNING).to(torch.long)
    converged = (g.abs().amax(1) <= tolerance_grad) & ~stop
    status[converged] = CONVERGED
    s_hist = torch.zeros(n, history, dim, device=device, dtype=dtype)
    y_hist = torch.zeros_like(s_hist)
    rho = torch.zeros(n, history, device=device, dtype=dtype)
    count = torch.zeros(n, dtype=torch.long, device=device)
    head = torch.zeros(n, dtype=torch.long, device=device)
    trace: list[torch.Tensor] = []

    for it in range(max_iterations):
        act = (status == RUNNING).nonzero().flatten()
        if act.numel() == 0:
            break
        d = -_two_loop(g[act], s_hist[act], y_hist[act], rho[act], count[act], head[act])
        gtd = (g[act] * d).sum(1)
        bad = gtd > -1e-30  # not a descent direction: fall back to steepest descent
        if bad.any():
            d[bad] = -g[act][bad]
            gtd[bad] = -(g[act][bad] ** 2).sum(1)
        if it == 0:
            t = (1.0 / g[act].abs().sum(1).clamp_min(1e-30)).clamp(max=1.0)
        else:
            t = torch.ones_like(gtd)
        searching = torch.ones(act.numel(), dtype=torch.bool, device=device)
        for _ in range(max_line_search):
            pos = searching.nonzero().flatten()
            if pos.numel() == 0:
                break
            rows = act[pos]
            x_try = x[rows] + t[pos, None] * d[pos]
            f_try, g_try, stop_try = fg(x_try, rows)
            evaluations[rows] += 1
            ok = stop_try | (f_try <= f[rows] + c1 * t[pos] * gtd[pos])
            if ok.any():
                acc, r = pos[ok], rows[ok]
                s_new, y_new = x_try[ok] - x[r], g_try[ok] - g[r]
                sy = (s_new * y_new).sum(1)
                store = sy > 1e-10
                if store.any():
                    rs = r[store]
                    slot = head[rs]
                    s_hist[rs, slot] = s_new[store]
                    y_hist[rs, slot] = y_new[store]
                    rho[rs, slot] = 1.0 / sy[store]
                    head[rs] = (slot + 1) % history
                    count[rs] = (count[rs] + 1).clamp(max=history)
                change = (f_try[ok] - f[r]).abs()
                x[r], f[r], g[r] = x_try[ok], f_try[ok], g_try[ok]
                iterations[r] += 1
                status[r[stop_try[ok]]] = STOPPED
                done = ~stop_try[ok] & (
                    (g_try[ok].abs().amax(1) <= tolerance_grad) | (change < tolerance_change)
                )
                status[r[done]] = CONVERGED
                searching[acc] = False
            t[searching] = t[searching] * 0.5
        failed = act[searching]
        status[failed] = LINE_SEARCH_FAILED
        iterations[failed] += 1
        trace.append(f.clone())
    status[status == RUNNING] = MAX_ITER
    return LBFGSResult(x, f, iterations, evaluations, status, trace)

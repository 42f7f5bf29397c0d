"""Batched L-BFGS: scipy's L-BFGS-B on many independent problems, evaluated together.

stAdv (Algorithm 2) minimises one loss per triplet with L-BFGS (Liu & Nocedal, 1989); the
reference implementations call scipy's ``fmin_l_bfgs_b`` once per triplet. Its behaviour
matters: the first step has unit length and the Moré-Thuente line search enforces the
strong Wolfe conditions, which keeps the flow small where a plain backtracking search
jumps to huge flows. Running the triplets as one big problem (``torch.optim.LBFGS`` on the
batch) would instead couple them through shared inner products and line searches.

So each problem runs its own, unmodified scipy L-BFGS-B in a lightweight thread; whenever
it asks for a function value the thread waits, and once every live problem has asked, the
main thread evaluates all requested points in one batched call of ``fg`` (the metric's
forward and backward pass on the GPU) and hands each problem its value and gradient.
Every problem follows exactly the iterates it would follow alone.

``fg`` may also say *stop* for a point (stAdv: the rank flipped). A problem stops when an
accepted iterate is such a point: its variables never change again (Alg. 2: the loss is 0
once flipped, and the paper's run ends there).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import optimize

# fg(x (m, D), rows (m,)) -> (loss (m,), grad (m, D), stop (m,) bool): evaluate the problems
# ``rows`` at ``x``.
Objective = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]

# why a problem ended
STOPPED, CONVERGED, MAX_ITER, ABNORMAL = 1, 2, 3, 4


@dataclass
class LBFGSResult:
    """Per-problem outcome (``n`` problems).

    Attributes:
        x: final points ``(n, D)``.
        loss: loss at ``x`` ``(n,)`` (0 for a stopped problem, as in Alg. 2).
        iterations: accepted L-BFGS iterations.
        evaluations: calls of the objective (forward+backward passes).
        status: :data:`STOPPED`, :data:`CONVERGED`, :data:`MAX_ITER` or :data:`ABNORMAL`
            (scipy's line search could not make progress).
        trace: per problem, the loss at the start and after each accepted iteration.
    """

    x: torch.Tensor
    loss: torch.Tensor
    iterations: torch.Tensor
    evaluations: torch.Tensor
    status: torch.Tensor
    trace: list[list[float]] = field(default_factory=list)


class _Stop(Exception):
    """Raised from scipy's callback to end a problem at an accepted stopping point."""


class _Problem(threading.Thread):
    def __init__(self, index: int, x0: np.ndarray, requests: queue.Queue, options: dict):
        super().__init__(daemon=True)
        self.index = index
        self.x0 = x0
        self.requests = requests
        self.options = options
        self.reply = threading.Event()
        self.answer: tuple[float, np.ndarray, bool] | None = None
        self.last: tuple[np.ndarray, float, bool] | None = None
        self.x = x0
        self.loss = float("nan")
        self.status = ABNORMAL
        self.iterations = 0
        self.evaluations = 0
        self.trace: list[float] = []
        self.error: BaseException | None = None

    def fun(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        self.reply.clear()
        self.requests.put(("eval", self, x))
        self.reply.wait()
        if self.answer is None:  # the batched evaluation failed: end this problem
            raise _Stop
        f, g, stop = self.answer
        self.evaluations += 1
        self.last = (x.copy(), f, stop)
        if not self.trace:
            self.trace.append(f)
        return f, g

    def callback(self, xk: np.ndarray) -> None:
        self.iterations += 1
        if self.last is not None and np.array_equal(self.last[0], xk):
            self.trace.append(self.last[1])
            if self.last[2]:
                self.x, self.loss, self.status = xk.copy(), self.last[1], STOPPED
                raise _Stop

    def run(self) -> None:
        try:
            res = optimize.minimize(
                self.fun,
                self.x0,
                jac=True,
                method="L-BFGS-B",
                callback=self.callback,
                options=self.options,
            )
            self.x, self.loss = np.asarray(res.x), float(res.fun)
            if self.last is not None and self.last[2] and np.array_equal(self.last[0], self.x):
                self.status = STOPPED
            elif res.success:
                self.status = CONVERGED
            elif res.nit >= self.options["maxiter"]:
                self.status = MAX_ITER
            else:
                self.status = ABNORMAL
        except _Stop:
            pass
        except BaseException as exc:  # surfaced by the main thread
            self.error = exc
        finally:
            self.requests.put(("done", self, None))


def minimize(
    fg: Objective,
    x0: torch.Tensor,
    max_iterations: int,
    history: int = 10,
    max_line_search: int = 20,
) -> LBFGSResult:
    """Minimise ``n`` independent problems ``x0 (n, D)`` with scipy's L-BFGS-B.

    scipy's defaults otherwise (``ftol`` from ``factr=1e7``, ``gtol=1e-5``), as in the
    reference code's ``fmin_l_bfgs_b(func, x0, maxiter=...)``.
    """
    n, _ = x0.shape
    device, dtype = x0.device, x0.dtype
    start = x0.detach().double().cpu().numpy()
    if max_iterations == 0:  # nothing to optimise: evaluate the start
        f, _, stop = fg(x0, torch.arange(n, device=device))
        count = torch.zeros(n, dtype=torch.long, device=device)
        status = torch.where(stop, STOPPED, MAX_ITER).to(device)
        return LBFGSResult(x0.clone(), f, count, count + 1, status, [[v] for v in f.tolist()])

    requests: queue.Queue = queue.Queue()
    options = {
        "maxiter": int(max_iterations),
        "maxcor": int(history),
        "maxls": int(max_line_search),
    }
    problems = [_Problem(i, start[i], requests, options) for i in range(n)]
    for p in problems:
        p.start()
    alive, waiting = set(problems), {}
    while alive:
        kind, problem, x = requests.get()
        if kind == "done":
            alive.discard(problem)
            waiting.pop(problem, None)
        else:
            waiting[problem] = x
        if waiting and len(waiting) == len(alive):  # every live problem waits: one batched call
            order = sorted(waiting, key=lambda p: p.index)
            rows = torch.tensor([p.index for p in order], device=device)
            xs = torch.from_numpy(np.stack([waiting[p] for p in order])).to(
                device=device, dtype=dtype
            )
            try:
                f, g, stop = fg(xs, rows)
                f = f.detach().double().cpu().numpy()
                g = g.detach().double().cpu().numpy()
                stop = stop.detach().cpu().numpy()
            except BaseException:
                for p in alive:  # release every thread before re-raising
                    p.answer = None
                    p.reply.set()
                raise
            waiting.clear()
            for j, p in enumerate(order):
                p.answer = (float(f[j]), g[j], bool(stop[j]))
                p.reply.set()
    for p in problems:
        p.join()
        if p.error is not None:
            raise p.error
    return LBFGSResult(
        x=torch.from_numpy(np.stack([p.x for p in problems])).to(device=device, dtype=dtype),
        loss=torch.tensor([p.loss for p in problems], dtype=dtype, device=device),
        iterations=torch.tensor([p.iterations for p in problems], dtype=torch.long, device=device),
        evaluations=torch.tensor(
            [p.evaluations for p in problems], dtype=torch.long, device=device
        ),
        status=torch.tensor([p.status for p in problems], dtype=torch.long, device=device),
        trace=[p.trace for p in problems],
    )

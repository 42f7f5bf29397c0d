"""Batched L-BFGS: scipy's L-BFGS-B on many independent problems, evaluated together.

stAdv (Algorithm 2) minimises one loss per triplet with L-BFGS (Liu & Nocedal, 1989); the
reference implementations call scipy's ``fmin_l_bfgs_b`` once per triplet. Its behaviour
matters: the first step has unit length and the Moré-Thuente line search enforces the
strong Wolfe conditions, which keeps the flow small where a plain backtracking search
jumps to huge flows. Running the triplets as one big problem (``torch.optim.LBFGS`` on the
batch) would instead couple them through shared inner products and line searches.

So each problem runs its own, unmodified scipy L-BFGS-B: the loop of
``scipy.optimize.minimize(method="L-BFGS-B")`` around scipy's reverse-communication step
``setulb``, one state per problem, stepped in this thread until the problem asks for a
function value. Once every live problem has asked, all requested points are evaluated in
one batched call of ``fg`` (the metric's forward and backward pass on the GPU) and each
problem gets its value and gradient. Every problem follows exactly the iterates it would
follow alone. Where scipy (< 1.15) has no such step, each problem runs
``scipy.optimize.minimize`` in a thread of its own that waits for the batched evaluation:
the same iterates, with a thread hand-off per problem and evaluation.

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


# scipy's L-BFGS-B defaults (``scipy.optimize.minimize(method="L-BFGS-B")``)
FTOL, GTOL, MAXFUN = 2.2204460492503131e-09, 1e-5, 15000
# setulb's task codes (scipy >= 1.15, ``scipy/optimize/_lbfgsb_py.py``)
_NEW_X, _FG, _CONVERGENCE = 1, 3, 4


def _setulb() -> Callable | None:
    """scipy's reverse-communication L-BFGS-B step, where its signature is the one
    ``scipy.optimize.minimize`` calls since scipy 1.15; ``None`` otherwise (threads then)."""
    try:
        from scipy.optimize import _lbfgsb
    except ImportError:  # pragma: no cover - scipy without the compiled module
        return None
    setulb = getattr(_lbfgsb, "setulb", None)
    doc = getattr(setulb, "__doc__", "") or ""
    if setulb is None or "csave" in doc:  # the Fortran interface of scipy < 1.15
        return None
    return setulb


class _Direct:
    """One problem's L-BFGS-B driven step by step: ``scipy.optimize.minimize``'s own loop
    (``_minimize_lbfgsb``) around the same ``setulb``, with its one-point cache of the last
    evaluated ``x``, so the iterates, evaluations and stopping reasons are scipy's.

    :meth:`advance` runs until the problem needs ``(f, g)`` at :attr:`request` (returns
    True) or has ended (False). No thread: every problem of a batch waits for the batched
    evaluation in the same loop.
    """

    def __init__(self, setulb: Callable, x0: np.ndarray, options: dict):
        n = x0.size
        m = options["maxcor"]
        self.setulb = setulb
        self.m, self.maxls, self.maxiter = m, options["maxls"], options["maxiter"]
        self.factr, self.pgtol = FTOL / np.finfo(float).eps, GTOL
        self.x = np.array(x0, dtype=np.float64)
        self.f: float | np.ndarray = np.array(0.0, dtype=np.float64)
        self.g = np.zeros(n, dtype=np.float64)
        self.low, self.up, self.nbd = np.zeros(n), np.zeros(n), np.zeros(n, np.int32)
        self.wa = np.zeros(2 * m * n + 5 * n + 11 * m * m + 8 * m, np.float64)
        self.iwa = np.zeros(3 * n, np.int32)
        self.task, self.ln_task = np.zeros(2, np.int32), np.zeros(2, np.int32)
        self.lsave, self.isave = np.zeros(4, np.int32), np.zeros(44, np.int32)
        self.dsave = np.zeros(29, np.float64)
        self.cached: tuple[np.ndarray, float, np.ndarray, bool] | None = None  # last evaluation
        self.request: np.ndarray | None = None
        self.loss = float("nan")
        self.status = ABNORMAL
        self.iterations = 0
        self.evaluations = 0
        self.trace: list[float] = []

    def answer(self, f: float, g: np.ndarray, stop: bool) -> None:
        """The value at :attr:`request`."""
        self.evaluations += 1
        self.cached = (self.request, f, g, stop)
        if not self.trace:
            self.trace.append(f)
        self.f, self.g = f, g
        self.request = None

    def advance(self) -> bool:
        task = self.task
        while True:
            self.g = self.g.astype(np.float64)
            self.setulb(
                self.m, self.x, self.low, self.up, self.nbd, self.f, self.g, self.factr,
                self.pgtol, self.wa, self.iwa, task, self.lsave, self.isave, self.dsave,
                self.maxls, self.ln_task,
            )  # fmt: skip
            if task[0] == _FG:
                if self.cached is not None and np.array_equal(self.x, self.cached[0]):
                    self.f, self.g = self.cached[1], self.cached[2]
                    continue
                self.request = self.x.copy()
                return True
            if task[0] == _NEW_X:
                self.iterations += 1
                last = self.cached
                if last is not None and np.array_equal(last[0], self.x):
                    self.trace.append(last[1])
                    if last[3]:  # an accepted point where fg said stop
                        self.x, self.loss, self.status = self.x.copy(), last[1], STOPPED
                        return False
                if self.iterations >= self.maxiter or self.evaluations > MAXFUN:
                    self._end(MAX_ITER)
                    return False
                continue
            self._end(CONVERGED if task[0] == _CONVERGENCE else ABNORMAL)
            return False

    def _end(self, status: int) -> None:
        self.loss = float(self.f)
        last = self.cached
        if last is not None and last[3] and np.array_equal(last[0], self.x):
            self.status = STOPPED
        else:
            self.status = status
        self.x = self.x.copy()


def minimize(
    fg: Objective,
    x0: torch.Tensor,
    max_iterations: int,
    history: int = 10,
    max_line_search: int = 20,
    threads: bool | None = None,
) -> LBFGSResult:
    """Minimise ``n`` independent problems ``x0 (n, D)`` with scipy's L-BFGS-B.

    scipy's defaults otherwise (``ftol`` from ``factr=1e7``, ``gtol=1e-5``), as in the
    reference code's ``fmin_l_bfgs_b(func, x0, maxiter=...)``.

    ``threads``: ``None`` (default) steps every problem's ``setulb`` in this thread where
    scipy (>= 1.15) offers it, else runs ``scipy.optimize.minimize`` in one thread per
    problem; ``True`` forces the threads, ``False`` the step-wise driver. Both give the
    same iterates; the step-wise driver has no thread hand-offs, which cost a round trip
    per problem per evaluation.
    """
    n, _ = x0.shape
    device, dtype = x0.device, x0.dtype
    start = x0.detach().double().cpu().numpy()
    if max_iterations == 0:  # nothing to optimise: evaluate the start
        f, _, stop = fg(x0, torch.arange(n, device=device))
        count = torch.zeros(n, dtype=torch.long, device=device)
        status = torch.where(stop, STOPPED, MAX_ITER).to(device)
        return LBFGSResult(x0.clone(), f, count, count + 1, status, [[v] for v in f.tolist()])

    options = {
        "maxiter": int(max_iterations),
        "maxcor": int(history),
        "maxls": int(max_line_search),
    }
    setulb = None if threads else _setulb()
    if setulb is None and threads is False:
        raise RuntimeError("this scipy has no step-wise L-BFGS-B (setulb); use threads=True")
    if setulb is not None:
        return _minimize_direct(fg, [_Direct(setulb, start[i], options) for i in range(n)], x0)
    requests: queue.Queue = queue.Queue()
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
    return _result(problems, device, dtype)


def _result(problems: list, device: torch.device, dtype: torch.dtype) -> LBFGSResult:
    """The per-problem outcomes of either driver as one batched :class:`LBFGSResult`."""
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


def _minimize_direct(fg: Objective, problems: list[_Direct], x0: torch.Tensor) -> LBFGSResult:
    """Every problem's :class:`_Direct` advanced to its next request, then one batched
    ``fg`` for all of them, until all have ended."""
    device, dtype = x0.device, x0.dtype
    waiting = [p for p in problems if p.advance()]
    index = {id(p): i for i, p in enumerate(problems)}
    while waiting:
        rows = torch.tensor([index[id(p)] for p in waiting], device=device)
        xs = torch.from_numpy(np.stack([p.request for p in waiting])).to(device=device, dtype=dtype)
        f, g, stop = fg(xs, rows)
        f = f.detach().double().cpu().numpy()
        g = g.detach().double().cpu().numpy()
        stop = stop.detach().cpu().numpy()
        for j, p in enumerate(waiting):
            p.answer(float(f[j]), g[j], bool(stop[j]))
        waiting = [p for p in waiting if p.advance()]
    return _result(problems, device, dtype)

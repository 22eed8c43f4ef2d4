"""Solvers of the guided probability-flow ODE as per-step coefficient tables (pure float64 math).

Every solver here works in data-prediction form (Lu et al. 2022, DPM-Solver++): at each grid point
t_i the guided network gives eps, hence the clipped x0 prediction D_i = clip((x - sigma_i eps) / alpha_i)
(alpha = sqrt(abar), sigma = sqrt(1 - abar), half log-SNR lambda = log(alpha / sigma)). A step from
grid point i to i + 1 is then a linear combination

    x_{i+1} = a_i x_i + sum_j w_{i,j} D_{i-j}  (+ n_i z_i, DDIM with eta > 0 only)

of the current x and the last few D (this step's first). The fast sampler keeps the D as a static
history buffer and reads a_i, w_i from device tables, so every solver runs through one captured
step. The solvers:

* ``"ddim"``: first order (DDIM, equal to DPM-Solver++ 1; eps re-derived from the clipped x0, as
  the reference code does), with optional eta noise.
* ``"dpmpp_2m"``, ``"dpmpp_3m"``: DPM-Solver++ multistep of order 2 and 3 (Lu et al. 2022,
  Algorithm 2 and the public code's third-order multistep update).
* ``"unipc"``: UniPC (Zhao et al. 2023), the B(h) = expm1(-h) variant ("bh2", the one its authors
  use for guided sampling), order 2: the UniP-2 predictor and the UniC corrector, which reuses the
  network pass at the predicted point, so it adds no evaluation. The corrected x and the predictor
  from it are folded into one linear step.

Orders: the first steps have too little history, so step i uses order ``min(order, i + 1,
steps - i)``: the lower orders at the start (every multistep solver does this) and the last two steps
at order <= 2 and 1 (``lower_order_final`` of the public code, here at every step count). The last
step goes from the last grid point (t = 0) to the clean image, alpha = 1, sigma = 0 (lambda =
infinity), where every solver's update is x = D: the x0 prediction there.

Written from the papers' formulas; the plain per-solver samplers in the tests check the tables.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["MULTISTEP_SOLVERS", "SOLVERS", "SolverTable", "solver_order", "solver_table"]

#: solver name -> its highest order
SOLVERS = {"ddim": 1, "dpmpp_2m": 2, "dpmpp_3m": 3, "unipc": 2}
MULTISTEP_SOLVERS = tuple(name for name, order in SOLVERS.items() if order > 1)


@dataclass(frozen=True)
class SolverTable:
    """Per-step coefficients in step order (index i = 0 is the first step, from ``t_start``).

    Attributes:
        a: ``float64 [steps]``, the factor of the current x.
        w: ``float64 [steps, depth]``: ``w[i, j]`` multiplies D_{i-j} (j = 0: this step's prediction).
        noise: ``float64 [steps]``, the factor of the step's eta noise (DDIM only; zero otherwise).
        order: ``int64 [steps]``, the order each step was taken at.
    """

    a: np.ndarray
    w: np.ndarray
    noise: np.ndarray
    order: np.ndarray

    @property
    def depth(self) -> int:
        """How many D the steps read (history length)."""
        return self.w.shape[1]


def solver_order(solver: str, step: int, steps: int) -> int:
    """The order of step ``step`` (0-based) of ``steps``: ``min(order, step + 1, steps - step)``."""
    return min(SOLVERS[solver], step + 1, steps - step)


def solver_table(solver: str, alphas_cumprod: np.ndarray, eta: float = 0.0) -> SolverTable:
    """The coefficient table of ``solver`` on a grid.

    Args:
        solver: A name in :data:`SOLVERS`.
        alphas_cumprod: ``float64 [steps]`` alpha-bar at the grid points in step order (the first is
            the entry point, decreasing noise after it); the clean image (alpha-bar 1) follows the last.
        eta: DDIM stochasticity (``"ddim"`` only; 0 for every multistep solver).

    Returns:
        :class:`SolverTable`.

    Raises:
        ValueError: an unknown solver, eta > 0 with a multistep solver, or alpha-bar outside (0, 1).
    """
    if solver not in SOLVERS:
        raise ValueError(f"`solver` must be one of {list(SOLVERS)}, got {solver!r}")
    if eta > 0 and solver != "ddim":
        raise ValueError(f"`eta`={eta} needs solver='ddim': the multistep solvers integrate the deterministic "
                         "ODE (eta = 0)")
    abar = np.asarray(alphas_cumprod, dtype=np.float64)
    if abar.ndim != 1 or abar.size == 0 or not np.all((abar > 0) & (abar < 1)):
        raise ValueError(f"`alphas_cumprod` must be a non-empty 1-D array in (0, 1), got {abar!r}")
    n = abar.size
    alpha = np.append(np.sqrt(abar), 1.0)  # the clean image follows the last grid point
    sigma = np.append(np.sqrt(1.0 - abar), 0.0)
    with np.errstate(divide="ignore"):
        lam = np.log(alpha) - np.log(sigma)  # +inf at the clean image
    depth = SOLVERS[solver] + (1 if solver == "unipc" else 0)  # the corrector reads one D more
    a, w = np.zeros(n), np.zeros((n, depth))
    noise, order = np.zeros(n), np.zeros(n, dtype=np.int64)
    for i in range(n):
        order[i] = solver_order(solver, i, n)
        if solver == "ddim":
            a[i], w[i, 0], noise[i] = _ddim(abar, i, eta)
        elif solver == "unipc":
            a[i], w[i] = _unipc(alpha, sigma, lam, i, n, depth)
        else:
            a[i], w[i] = _dpmpp(alpha, sigma, lam, i, int(order[i]), depth)
    return SolverTable(a=a, w=w, noise=noise, order=order)


def _unit(j: int, depth: int) -> np.ndarray:
    e = np.zeros(depth)
    e[j] = 1.0
    return e


def _ddim(abar: np.ndarray, i: int, eta: float) -> tuple[float, float, float]:
    """DDIM from grid point i to i + 1: x' = sqrt(abar') x0 + c eps + s z with eps re-derived from x0."""
    a_t = float(abar[i])
    a_next = float(abar[i + 1]) if i + 1 < abar.size else 1.0
    s = eta * math.sqrt((1.0 - a_next) / (1.0 - a_t)) * math.sqrt(1.0 - a_t / a_next)
    c = math.sqrt(max(1.0 - a_next - s * s, 0.0))
    # eps = (x - sqrt(a_t) x0) / sqrt(1 - a_t)
    return c / math.sqrt(1.0 - a_t), math.sqrt(a_next) - c * math.sqrt(a_t / (1.0 - a_t)), s


def _dpmpp(alpha, sigma, lam, i: int, order: int, depth: int) -> tuple[float, np.ndarray]:
    """DPM-Solver++ multistep from grid point i to i + 1 at ``order`` (data prediction)."""
    if sigma[i + 1] == 0.0:  # to the clean image: x = D_i
        return 0.0, _unit(0, depth)
    h = lam[i + 1] - lam[i]
    phi1 = math.expm1(-h)  # e^{-h} - 1
    a = sigma[i + 1] / sigma[i]
    e0 = _unit(0, depth)
    w = -alpha[i + 1] * phi1 * e0
    if order >= 2:
        r0 = (lam[i] - lam[i - 1]) / h
        d1_0 = (e0 - _unit(1, depth)) / r0
        if order == 2:
            w = w - 0.5 * alpha[i + 1] * phi1 * d1_0
        else:
            r1 = (lam[i - 1] - lam[i - 2]) / h
            d1_1 = (_unit(1, depth) - _unit(2, depth)) / r1
            d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            phi2 = phi1 / h + 1.0
            phi3 = phi2 / h - 0.5
            w = w + alpha[i + 1] * phi2 * d1 - alpha[i + 1] * phi3 * d2
    return a, w


def _unipc_rhos(rks: np.ndarray, h: float, order: int) -> tuple[np.ndarray | None, np.ndarray]:
    """UniPC-bh2 coefficients: predictor (UniP, ``order - 1`` differences) and corrector (UniC)."""
    hh = -h
    h_phi_k = math.expm1(hh) / hh - 1.0
    b_h = math.expm1(hh)
    factorial, rows, b = 1, [], []
    for k in range(1, order + 1):
        rows.append(rks ** (k - 1))
        b.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    r, b = np.stack(rows), np.asarray(b)
    if order == 1:
        return None, np.asarray([0.5])
    rhos_p = np.asarray([0.5]) if order == 2 else np.linalg.solve(r[:-1, :-1], b[:-1])
    return rhos_p, np.linalg.solve(r, b)


def _unipc_parts(alpha, sigma, lam, src: int, dst: int, order: int, depth: int, shift: int):
    """The UniPC transition from grid point ``src`` to ``dst`` (= src + 1) at ``order``.

    D vectors are in the indexing of a step whose own prediction is ``src + shift`` (``shift`` = 1
    when the transition is the one into the current point). Returns ``(factor of x_src, the D-part
    of x_t_, B_h alpha_dst, pred_res vector, corr_res vector, rho_c_last)``.
    """
    h = lam[dst] - lam[src]
    e_src = _unit(shift, depth)
    d1s, rks = [], []
    for k in range(1, order):
        rk = (lam[src - k] - lam[src]) / h
        rks.append(rk)
        d1s.append((_unit(shift + k, depth) - e_src) / rk)
    rhos_p, rhos_c = _unipc_rhos(np.asarray(rks + [1.0]), h, order)
    b_h = math.expm1(-h)
    zero = np.zeros(depth)
    pred = sum((rho * d for rho, d in zip(rhos_p, d1s)), zero) if rhos_p is not None else zero
    corr = sum((rho * d for rho, d in zip(rhos_c[:-1], d1s)), zero)
    x_part = -alpha[dst] * math.expm1(-h) * e_src
    return sigma[dst] / sigma[src], x_part, alpha[dst] * b_h, pred, corr, float(rhos_c[-1])


def _unipc(alpha, sigma, lam, i: int, n: int, depth: int) -> tuple[float, np.ndarray]:
    """UniPC step i: correct x_i with the prediction made at it, then predict x_{i+1}, as one step."""
    correction = np.zeros(depth)
    if i >= 1:  # UniC into point i (the network pass at the predicted x_i is D_i): x_i^c = x_i + correction . D
        order = solver_order("unipc", i - 1, n)
        _, _, ab, pred, corr, rho_last = _unipc_parts(alpha, sigma, lam, i - 1, i, order, depth, shift=1)
        correction = ab * (pred - corr - rho_last * (_unit(0, depth) - _unit(1, depth)))
    if sigma[i + 1] == 0.0:  # to the clean image: x = D_i
        return 0.0, _unit(0, depth)
    order = solver_order("unipc", i, n)
    a, x_part, ab, pred, _, _ = _unipc_parts(alpha, sigma, lam, i, i + 1, order, depth, shift=0)
    return a, a * correction + x_part - ab * pred

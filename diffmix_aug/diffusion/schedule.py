"""Noise schedules and timestep respacing (pure functions, float64), after guided-diffusion.

Notation: ``betas`` = beta_t, ``alphas_cumprod`` = alpha-bar_t (the paper's bar-alpha).
"""

from __future__ import annotations

import math

import numpy as np

from .._checks import check_choice, check_positive_int

__all__ = ["BETA_SCHEDULES", "SPACINGS", "get_beta_schedule", "respaced_betas", "space_timesteps", "timestep_grid"]

BETA_SCHEDULES = ("linear", "cosine")
SPACINGS = ("linear", "quadratic", "logsnr")


def get_beta_schedule(name: str, num_timesteps: int = 1000) -> np.ndarray:
    """Return the ``float64 [num_timesteps]`` beta schedule.

    ``linear``: betas from 1e-4 * (1000 / T) to 0.02 * (1000 / T) (guided-diffusion's scaling).
    ``cosine``: improved-DDPM's squared-cosine alpha-bar with s = 0.008 and beta capped at 0.999.
    """
    check_choice("beta_schedule", name, BETA_SCHEDULES)
    check_positive_int("num_timesteps", num_timesteps)
    if name == "linear":
        scale = 1000.0 / num_timesteps
        return np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [min(1 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), 0.999)
             for i in range(num_timesteps)]
    return np.asarray(betas, dtype=np.float64)


def space_timesteps(num_timesteps: int, section_counts: str | int | list[int]) -> list[int]:
    """Original timesteps kept by a respacing, ascending (guided-diffusion's ``space_timesteps``).

    Args:
        num_timesteps: Length of the original process (e.g. 1000).
        section_counts: ``"ddimN"``: the integer stride ``i`` for which ``len(range(0, T, i)) == N``
            (``"ddim100"`` of 1000 gives 0, 10, ..., 990); an int or ``"N"``: N evenly rounded
            steps; a list / comma string: per-section counts.

    Returns:
        Sorted list of kept original timesteps.

    Raises:
        ValueError: impossible counts (names the requested value and the limit).
    """
    check_positive_int("num_timesteps", num_timesteps)
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            desired = int(section_counts[len("ddim"):])
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == desired:
                    return list(range(0, num_timesteps, stride))
            if desired == num_timesteps:
                return list(range(num_timesteps))
            raise ValueError(f"`section_counts`={section_counts!r}: no integer stride gives exactly {desired} "
                             f"steps out of {num_timesteps}; use a plain count such as {str(desired)!r}")
        section_counts = [int(x) for x in section_counts.split(",")]
    elif isinstance(section_counts, int):
        section_counts = [section_counts]
    size_per = num_timesteps // len(section_counts)
    extra = num_timesteps % len(section_counts)
    start_idx = 0
    all_steps: list[int] = []
    for i, section_count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if size < section_count:
            raise ValueError(f"`section_counts`: cannot take {section_count} steps from a section of {size} steps")
        frac_stride = 1 if section_count <= 1 else (size - 1) / (section_count - 1)
        cur_idx = 0.0
        for _ in range(section_count):
            all_steps.append(start_idx + round(cur_idx))
            cur_idx += frac_stride
        start_idx += size
    return sorted(set(all_steps))


def respaced_betas(alphas_cumprod: np.ndarray, use_timesteps: list[int]) -> np.ndarray:
    """Betas of the respaced process: beta'_k = 1 - abar_{s_k} / abar_{s_{k-1}} (abar_{s_{-1}} = 1)."""
    last = 1.0
    out = []
    for t in sorted(use_timesteps):
        out.append(1.0 - alphas_cumprod[t] / last)
        last = alphas_cumprod[t]
    return np.asarray(out, dtype=np.float64)


def timestep_grid(t_start: int, steps: int, spacing: str = "linear",
                  alphas_cumprod: np.ndarray | None = None) -> np.ndarray:
    """The ``steps`` original timesteps a partial-noise sampler evaluates the network at, descending.

    The grid starts at ``t_start`` and ends at 0 (one step: ``[t_start]`` alone); after the network
    pass at the last grid point every sampler takes one last step to the clean image (alpha-bar = 1).
    Spacings (``design/performance.md`` §5):

    * ``"linear"``: uniform in t, ``t_i = t_start (1 - i / (steps - 1))``. With ``t_start=540,
      steps=55`` this is 540, 530, ..., 0: exactly the reference protocol (``ddim100`` entered at
      respaced index 54, ``design/method.md`` §5.4).
    * ``"quadratic"``: uniform in sqrt(t) (DPM-Solver's ``time_quadratic``), denser near t = 0.
    * ``"logsnr"``: uniform in the half log-SNR lambda = log(sqrt(abar) / sqrt(1 - abar)) between
      ``t_start`` and 0 (needs ``alphas_cumprod``).

    Timesteps are rounded to integers (the network takes integer timesteps) and kept strictly
    decreasing: a rounded point that collides with its neighbour moves by one toward ``t_start``.

    Args:
        t_start: Entry timestep, ``0 <= t_start < len(alphas_cumprod)`` when given.
        steps: Number of network evaluations (grid points), ``1 <= steps <= t_start + 1``.
        spacing: One of :data:`SPACINGS`.
        alphas_cumprod: ``float64 [T]`` alpha-bar of the training process (``"logsnr"`` only).

    Returns:
        ``int64 [steps]``, strictly decreasing, first ``t_start``, last 0 (when ``steps >= 2``).

    Raises:
        ValueError: a spacing not in :data:`SPACINGS`, a negative ``t_start``, or more steps than
            distinct timesteps in ``0..t_start``.
    """
    check_choice("spacing", spacing, SPACINGS)
    steps = check_positive_int("steps", steps)
    t_start = check_positive_int("t_start", t_start, allow_zero=True)
    if steps > t_start + 1:
        raise ValueError(f"`steps`={steps} needs {steps} distinct timesteps, but t_start={t_start} has only "
                         f"{t_start + 1} (0..{t_start}); lower steps or raise t_start")
    if steps == 1:
        return np.asarray([t_start], dtype=np.int64)
    frac = 1.0 - np.arange(steps, dtype=np.float64) / (steps - 1)  # 1 -> 0
    if spacing == "linear":
        t = t_start * frac
    elif spacing == "quadratic":
        t = t_start * frac ** 2
    else:
        if alphas_cumprod is None:
            raise ValueError("`spacing`='logsnr' needs `alphas_cumprod` (the training alpha-bar table)")
        abar = np.asarray(alphas_cumprod, dtype=np.float64)[: t_start + 1]
        lam = 0.5 * (np.log(abar) - np.log1p(-abar))  # decreasing in t
        target = lam[t_start] + (lam[0] - lam[t_start]) * (1.0 - frac)
        t = np.interp(target, lam[::-1], np.arange(t_start, -1, -1, dtype=np.float64))
    grid = np.floor(t + 0.5).astype(np.int64)
    grid[0], grid[-1] = t_start, 0
    for i in range(steps - 2, 0, -1):  # strictly decreasing: push collisions toward t_start ...
        grid[i] = max(grid[i], grid[i + 1] + 1)
    for i in range(1, steps - 1):      # ... and back below t_start where that overshot
        grid[i] = min(grid[i], grid[i - 1] - 1)
    return grid

"""The fast guided sampler: DDIM and the multistep solvers (same math as the plain references).

The solver is a setting (``solver="ddim"`` is the reference's first-order DDIM; ``"dpmpp_2m"``,
``"dpmpp_3m"``, ``"unipc"``: :mod:`~diffmix_aug.sampling.solvers`). Every solver takes the same step:
one guided network pass, the clipped x0 prediction D, then x <- a_k x + sum_j w_{k,j} D_{k-j} from
per-step tables; earlier D live in a history buffer. Speed-ups, all exact (``design/performance.md`` §3-4):

* conditional and unconditional passes batched as 2B; for an SDM, the encoder runs once on B and the
  SPADE modulations are computed once per batch (null-label ones once per resolution), see
  :mod:`~diffmix_aug.sampling.denoisers`;
* every per-step coefficient is a device tensor indexed by a device step-index tensor, so a step makes
  no host sync and no host-to-device copy; eta noise is pre-drawn into one buffer;
* optional fp16 / bf16 autocast of the model (guidance combine and the update in float32), NHWC;
* optional CUDA-graph capture of one step (:mod:`~diffmix_aug.sampling.graph`): x, the step index, the
  history of earlier predictions and the eta noise are static buffers; or ``torch.compile``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .._checks import check_choice, check_positive_int, describe
from ._base import DDIMSettings, SamplingInterrupted, draw_normal, draw_step_noise
from .denoisers import PRECISIONS, make_denoiser
from .solvers import solver_table

__all__ = ["DDIMSampler", "DDIMStepOutput", "LoopBuffers", "ModelCaches", "SolverTables"]

logger = logging.getLogger(__name__)

MODULATION_KINDS = ("auto", "full", "hidden")


class ModelCaches:
    """What fast sampling keeps for one model: its guided denoisers and the captured CUDA-graph steps
    (:class:`~diffmix_aug.sampling.graph.StepGraphs`).

    Denoisers are keyed by every setting that changes what they compute (:meth:`DDIMSampler.denoiser_key`:
    modulation kind, guidance scale, precision, memory format, the SDM split), so samplers with other
    settings can share one ``ModelCaches`` and never get each other's denoiser.

    The sampler holds no model state: these caches belong with the object that owns the model (a
    :class:`~diffmix_aug.sampling.synthesizer.Synthesizer` keeps one and passes it to every
    :meth:`DDIMSampler.sample`). Without one, each ``sample`` call builds what it needs and drops it.

    Args:
        model: The model these caches are for (checked on every use).
    """

    def __init__(self, model) -> None:
        self.model = model
        self.denoisers: dict[tuple, object] = {}
        self.graphs = None  # graph.StepGraphs, created on first CUDA-graph use

    def check(self, model) -> None:
        if model is not self.model:
            raise ValueError("`caches` were made for another model; build ModelCaches(model) for this one")


@dataclass(frozen=True)
class DDIMStepOutput:
    """Result of :meth:`DDIMSampler.step`.

    Attributes:
        prev_sample: ``float32 [N, 3, H, W]``, x at the next grid point (the next step index k - 1).
        pred_x0: ``float32 [N, 3, H, W]``, the (clipped) predicted x0.
    """

    prev_sample: torch.Tensor
    pred_x0: torch.Tensor


@dataclass(frozen=True)
class SolverTables:
    """Per-step float32 coefficients on one device (from the float64 :func:`~.solvers.solver_table`).

    Index k is the step index (k = 0 is the last step, to the clean image).
    """

    timesteps: torch.Tensor        # int64 [steps] original timestep of index k
    sqrt_recip_abar: torch.Tensor  # [steps] sqrt(1 / abar_k): x0 = sqrt(1/abar) x - sqrt(1/abar - 1) eps
    sqrt_recipm1_abar: torch.Tensor  # [steps] sqrt(1 / abar_k - 1)
    a: torch.Tensor                # [steps] factor of x
    w: torch.Tensor                # [steps, depth] factors of the last ``depth`` x0 predictions (newest first)
    noise: torch.Tensor            # [steps] factor of the eta noise (DDIM only), 0 at k = 0

    @property
    def depth(self) -> int:
        return self.w.shape[1]


@dataclass
class LoopBuffers:
    """The state one step reads and writes in place (the static buffers of a CUDA graph).

    Attributes:
        x: ``float32 [B, 3, H, W]`` the current sample.
        k: ``int64 [1]`` the step index (decremented by each step).
        history: ``float32 [depth, B, 3, H, W]`` the last x0 predictions, newest first (None for DDIM).
        step_noise: ``float32 [steps, B, 3, H, W]`` pre-drawn eta noise, or None.
    """

    x: torch.Tensor
    k: torch.Tensor
    history: torch.Tensor | None
    step_noise: torch.Tensor | None

    def reset(self, x: torch.Tensor, start_index: int, step_noise: torch.Tensor | None) -> None:
        """Load a new start: x copied in, k at the first step, history cleared, eta noise copied in."""
        self.x.copy_(x)
        self.k.fill_(start_index)
        if self.history is not None:
            self.history.zero_()
        if self.step_noise is not None:
            self.step_noise.copy_(step_noise)


def _pick(table: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """``table[k]`` as a ``[1]`` tensor without a host sync (``k`` is a device ``[1]`` int64 tensor)."""
    return torch.index_select(table, 0, k)


class DDIMSampler(DDIMSettings):
    """Guided partial-noise sampling for DiffMix synthesis (fast path), DDIM or a multistep solver.

    Per step at step index k (original timestep t = ``grid_timesteps[k]``):
    eps = eps_u + s (eps_c - eps_u) on the eps channels, only when s > 1 (null label = zeros);
    D = clip(sqrt(1/abar) x - sqrt(1/abar - 1) eps); then x <- a_k x + sum_j w_{k,j} D_{k-j} (+ n_k z).
    For DDIM that is x_prev = sqrt(abar_prev) D + sqrt(1 - abar_prev - sigma^2) eps' + sigma z with eps'
    re-derived from the clipped D (the reference code's update, rearranged); for the multistep solvers
    see :mod:`~diffmix_aug.sampling.solvers`.

    Guidance: the paper's Eq. 7 writes eps = eps_c + w (eps_c - eps_u); the public code uses
    eps = eps_u + s (eps_c - eps_u), so s = 1 + w. With ``guidance_form="reference"`` (default)
    ``guidance_scale`` is s (DiffMix: 1.5, i.e. w = 0.5); with ``guidance_form="paper"`` it is w.
    s = 1 runs one (conditional) pass per step.

    Args:
        num_train_timesteps, steps, t_start, solver, spacing, guidance_scale, eta, beta_schedule,
            clip_denoised, guidance_form: see :class:`~diffmix_aug.sampling._base.DDIMSettings`.
        precision: ``"fp32"`` (default), ``"fp16"`` or ``"bf16"``: autocast of the model.
        channels_last: Feed the model NHWC tensors (convert the model with
            ``model.to(memory_format=torch.channels_last)``).
        cuda_graph: Capture one step as a CUDA graph and replay it (CUDA only; falls back to eager).
        compile: Wrap the step in ``torch.compile`` (eager path only; off by default).
        max_batch: Largest batch per loop; larger inputs run in chunks. With ``cuda_graph`` the last
            partial chunk is padded to ``max_batch`` so one graph serves every chunk.
        modulation_kind: SDM only: ``"full"`` caches every SPADE gamma/beta, ``"hidden"`` only the
            SPADE hidden activations; ``"auto"`` picks full unless it exceeds ``cache_budget_bytes``.
        cache_budget_bytes: Memory allowed for the per-batch modulation cache (``"auto"``); None = no limit.
        use_sdm_split: Use the SDM encode/modulation/decode rewrites when the model has them.

    Example:
        >>> sampler = DDIMSampler(steps=55, t_start=540)  # the reference protocol (the defaults)
        >>> sampler.timesteps[0], sampler.timesteps[1], sampler.timesteps[-1], sampler.num_inference_steps
        (540, 530, 0, 55)
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        steps: int = 55,
        t_start: int = 540,
        solver: str = "ddim",
        spacing: str = "linear",
        guidance_scale: float = 1.5,
        eta: float = 0.0,
        beta_schedule: str = "linear",
        clip_denoised: bool = True,
        guidance_form: str = "reference",
        *,
        precision: str = "fp32",
        channels_last: bool = False,
        cuda_graph: bool = False,
        compile: bool = False,
        max_batch: int | None = None,
        modulation_kind: str = "auto",
        cache_budget_bytes: int | None = None,
        use_sdm_split: bool = True,
        **removed,
    ) -> None:
        super().__init__(num_train_timesteps, steps, t_start, solver, spacing, guidance_scale, eta, beta_schedule,
                         clip_denoised, guidance_form, **removed)
        self.precision = check_choice("precision", precision, tuple(PRECISIONS))
        self.modulation_kind = check_choice("modulation_kind", modulation_kind, MODULATION_KINDS)
        for name, value in (("channels_last", channels_last), ("cuda_graph", cuda_graph), ("compile", compile),
                            ("use_sdm_split", use_sdm_split)):
            if not isinstance(value, bool):
                raise TypeError(f"`{name}` must be a bool, got {describe(value)}")
        self.channels_last, self.cuda_graph, self.compile = channels_last, cuda_graph, compile
        self.use_sdm_split = use_sdm_split
        self.max_batch = None if max_batch is None else check_positive_int("max_batch", max_batch)
        self.cache_budget_bytes = (None if cache_budget_bytes is None
                                   else check_positive_int("cache_budget_bytes", cache_budget_bytes, allow_zero=True))
        self._tables: dict[torch.device, SolverTables] = {}
        self._compiled = None
        #: what the last ``sample`` call ran: {"path": "eager"|"graph"|"compiled", "denoiser": ..., "kind": ...}
        self.last_run: dict = {}

    def settings(self) -> dict:
        out = super().settings()
        out.update(precision=self.precision, channels_last=self.channels_last, cuda_graph=self.cuda_graph,
                   compile=self.compile, max_batch=self.max_batch, modulation_kind=self.modulation_kind,
                   cache_budget_bytes=self.cache_budget_bytes, use_sdm_split=self.use_sdm_split)
        return out

    def replace(self, **changes) -> DDIMSampler:
        """A new sampler with some settings changed (caches are not shared)."""
        return DDIMSampler(**{**self.settings(), **changes})

    # ------------------------------------------------------------------ coefficient tables
    def tables(self, device: torch.device | str) -> SolverTables:
        """The coefficient tables on ``device`` (built once per device, float64 math then float32)."""
        device = torch.device(device)
        tab = self._tables.get(device)
        if tab is None:
            abar = self.alphas_cumprod  # index k (k = 0: the last grid point)
            steps = solver_table(self.solver, abar[::-1], self.eta)  # step order: first step first

            def dev(values) -> torch.Tensor:
                return torch.as_tensor(values.copy(), dtype=torch.float32, device=device)

            tab = SolverTables(
                timesteps=torch.as_tensor(self.grid_timesteps, dtype=torch.long, device=device),
                sqrt_recip_abar=dev(np.sqrt(1.0 / abar)), sqrt_recipm1_abar=dev(np.sqrt(1.0 / abar - 1.0)),
                a=dev(steps.a[::-1]), w=dev(steps.w[::-1]), noise=dev(steps.noise[::-1]),
            )
            self._tables[device] = tab
        return tab

    @property
    def history_depth(self) -> int:
        """How many earlier x0 predictions a step reads (0 for DDIM: it needs only its own)."""
        depth = self.tables("cpu").depth
        return 0 if depth == 1 else depth

    def buffers(self, x: torch.Tensor, step_noise: torch.Tensor | None) -> LoopBuffers:
        """Fresh loop buffers for a start ``x`` (history zeroed, k at the first step)."""
        depth = self.history_depth
        history = x.new_zeros((depth, *x.shape)) if depth else None
        k = torch.full((1,), self.start_index, dtype=torch.long, device=x.device)
        return LoopBuffers(x=x, k=k, history=history, step_noise=step_noise)

    # ------------------------------------------------------------------ one step
    def step(
        self,
        eps: torch.Tensor,
        step_index: int | torch.Tensor,
        x_t: torch.Tensor,
        noise: torch.Tensor | None = None,
    ) -> DDIMStepOutput:
        """One DDIM update from the (already guided) epsilon (``solver="ddim"`` only: a multistep
        solver's step also reads earlier predictions, see :meth:`sample`).

        Args:
            eps: ``float [N, 3, H, W]`` guided noise prediction at ``x_t``.
            step_index: Step index k (int, or a device int64 ``[1]`` tensor: no host sync).
            x_t: ``float [N, 3, H, W]``.
            noise: ``[N, 3, H, W]`` eta noise z (ignored when eta = 0; required when eta > 0 and k > 0).

        Returns:
            :class:`DDIMStepOutput` (float32).
        """
        if self.solver != "ddim":
            raise ValueError(f"step() is the single DDIM update; solver={self.solver!r} keeps a history of "
                             "earlier predictions: use sample()")
        tab = self.tables(x_t.device)
        if isinstance(step_index, torch.Tensor):
            k = step_index.reshape(1).to(device=x_t.device, dtype=torch.long)
        else:
            if not 0 <= int(step_index) < self.num_inference_steps:
                raise ValueError(f"`step_index` must be in 0..{self.num_inference_steps - 1}, got {step_index}")
            k = torch.tensor([int(step_index)], device=x_t.device)
            if self.eta > 0 and int(step_index) > 0 and noise is None:
                raise ValueError("`noise` is required when eta > 0 (draw it with an explicit generator)")
        return self._update(eps.float(), k, x_t.float(), noise, tab)

    def _predict_x0(self, eps: torch.Tensor, k: torch.Tensor, x: torch.Tensor, tab: SolverTables) -> torch.Tensor:
        pred_x0 = _pick(tab.sqrt_recip_abar, k) * x - _pick(tab.sqrt_recipm1_abar, k) * eps
        return pred_x0.clamp(-1.0, 1.0) if self.clip_denoised else pred_x0

    def _update(self, eps, k, x, noise, tab: SolverTables) -> DDIMStepOutput:
        pred_x0 = self._predict_x0(eps, k, x, tab)
        prev = _pick(tab.a, k) * x + _pick(tab.w[:, 0], k) * pred_x0
        if self.eta > 0 and noise is not None:
            prev = prev + _pick(tab.noise, k) * noise  # 0 at k = 0
        return DDIMStepOutput(prev_sample=prev, pred_x0=pred_x0)

    def _loop_step(self, denoiser, conditioning, buf: LoopBuffers) -> None:
        """One in-place step on the loop buffers: x <- next x, history <- (D, history[:-1]), k <- k - 1
        (what a CUDA graph captures: no host value is read or baked in)."""
        x, k = buf.x, buf.k
        tab = self.tables(x.device)
        t = _pick(tab.timesteps, k).expand(x.shape[0])
        eps = denoiser(x, t, conditioning)
        if buf.history is None:  # DDIM: the step reads its own prediction only
            noise = torch.index_select(buf.step_noise, 0, k)[0] if buf.step_noise is not None else None
            x.copy_(self._update(eps, k, x, noise, tab).prev_sample)
        else:
            hist = buf.history
            hist.copy_(torch.roll(hist, 1, 0))
            hist[0].copy_(self._predict_x0(eps, k, x, tab))
            w = torch.index_select(tab.w, 0, k).view(-1, *([1] * x.ndim))  # [depth, 1, 1, 1, 1]
            x.copy_(_pick(tab.a, k) * x + (w * hist).sum(0))
        k.sub_(1)

    # ------------------------------------------------------------------ sampling
    def denoiser_for(self, model, x0: torch.Tensor, caches: ModelCaches | None = None):
        """The guided denoiser for ``model`` on batches like ``x0`` (kept in ``caches`` when given)."""
        kind = self._pick_kind(model, x0)
        key = self.denoiser_key(kind)
        den = caches.denoisers.get(key) if caches is not None else None
        if den is None:
            den = make_denoiser(model, self.scale, precision=self.precision, channels_last=self.channels_last,
                                kind=kind, use_split=self.use_sdm_split)
            if caches is not None:
                caches.denoisers[key] = den
        return den

    def denoiser_key(self, kind: str) -> tuple:
        """Every setting a denoiser depends on: (modulation kind, guidance s, precision, NHWC, SDM split)."""
        return (kind, self.scale, self.precision, self.channels_last, self.use_sdm_split)

    def _pick_kind(self, model, x0: torch.Tensor) -> str:
        if self.modulation_kind != "auto":
            return self.modulation_kind
        if self.cache_budget_bytes is None or not callable(getattr(model, "spade_layers", None)):
            return "full"
        need = self.full_cache_bytes(model, x0.shape[0], tuple(x0.shape[2:]))
        if need > self.cache_budget_bytes:
            logger.info("modulation cache: 'full' needs %d bytes > budget %d; using 'hidden'", need,
                        self.cache_budget_bytes)
            return "hidden"
        return "full"

    def full_cache_bytes(self, model, batch: int, size: tuple[int, int]) -> int:
        """Bytes of the "full" modulation cache (every SPADE gamma and beta) for one loop of ``batch`` images.

        Counts cond and null halves (2 x min(batch, max_batch) images when guided) in the model-call dtype.
        """
        elem = 4 if self.precision == "fp32" else 2
        per_image = sum(2 * norm.mlp_gamma.out_channels * (size[0] // norm.ds) * (size[1] // norm.ds)
                        for norm in model.spade_layers())
        images = min(batch, self.max_batch or batch) * (2 if self.guided else 1)
        return per_image * images * elem

    @torch.no_grad()
    def sample(
        self,
        model,
        x0: torch.Tensor,
        cond: torch.Tensor,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        step_noise: torch.Tensor | None = None,
        should_stop: Callable[[], bool] | None = None,
        *,
        caches: ModelCaches | None = None,
        from_noise: bool = False,
    ) -> torch.Tensor:
        """Synthesize images from original patches and label maps.

        Args:
            model: Callable ``(x [N,3,H,W], t [N] int64 original timesteps, y [N,C,H,W]) -> [N, 3 or 6, H, W]``;
                an SDM U-Net gets the exact rewrites.
            x0: ``float [N, 3, H, W]`` original patches in [-1, 1].
            cond: ``float [N, C, H, W]`` encoded label maps (null label = zeros).
            noise: ``[N, 3, H, W]`` start noise z of x = sqrt(abar) x0 + sqrt(1 - abar) z; drawn from
                ``generator`` when None.
            generator: Source of all randomness: start noise, then (eta > 0) one draw per step k = start..1.
            step_noise: Pre-drawn eta noise ``[steps, N, 3, H, W]`` (entry k for step index k).
            should_stop: Polled between denoising steps (eager and compiled paths); when it returns
                True the loop raises :class:`SamplingInterrupted` (a producer being closed).
            caches: The model's :class:`ModelCaches` (denoisers, CUDA graphs), kept by the caller
                across calls; None builds them for this call only.
            from_noise: Start from ``noise`` itself instead of the partially noised ``x0`` (plain
                generation, as in training previews; use a ``t_start`` near T - 1).

        Returns:
            ``float32 [N, 3, H, W]`` in [-1, 1] (with ``clip_denoised``). Equal to the reference sampler
            fed the same noise, to float rounding (fp32).
        """
        self.check_inputs(model, x0, cond, noise)
        self.check_step_noise(step_noise, x0)
        if caches is None:
            caches = ModelCaches(model)
        caches.check(model)
        device = x0.device
        if noise is None:
            noise = draw_normal(tuple(x0.shape), generator, device)
        if step_noise is None:
            step_noise = draw_step_noise(self, tuple(x0.shape), generator, device)
        n = x0.shape[0]
        if n == 0:
            return x0.float().clone()
        chunk = self.max_batch or n
        outs = []
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            sn = None if step_noise is None else step_noise[:, lo:hi]
            outs.append(self._sample_chunk(model, x0[lo:hi], cond[lo:hi], noise[lo:hi], sn, should_stop, caches,
                                           from_noise))
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def _sample_chunk(self, model, x0, cond, noise, step_noise, should_stop, caches: ModelCaches,
                      from_noise: bool) -> torch.Tensor:
        denoiser = self.denoiser_for(model, x0, caches)
        abar = self.alphas_cumprod[self.start_index]
        if from_noise:
            x = noise.float().clone().contiguous()
        else:
            x = (math.sqrt(abar) * x0.float() + math.sqrt(1.0 - abar) * noise.float()).contiguous()
        self.last_run = {"denoiser": type(denoiser).__name__, "kind": getattr(denoiser, "kind", None),
                         "precision": self.precision, "solver": self.solver}
        if self.cuda_graph and not self.compile:
            from .graph import StepGraphs

            if caches.graphs is None or caches.graphs.sampler is not self:
                caches.graphs = StepGraphs(self)
            out = caches.graphs.run(denoiser, x, cond, step_noise, pad_to=self.max_batch)
            if out is not None:
                self.last_run["path"] = "graph"
                return out
        conditioning = denoiser.prepare(cond)
        buf = self.buffers(x, step_noise)
        step = self._loop_step
        if self.compile:
            if self._compiled is None:
                self._compiled = torch.compile(self._loop_step, dynamic=False)
            step = self._compiled
        for _ in range(self.num_inference_steps):
            if should_stop is not None and should_stop():
                raise SamplingInterrupted("sampling stopped at a step boundary (should_stop() returned True)")
            step(denoiser, conditioning, buf)
        self.last_run["path"] = "compiled" if self.compile else "eager"
        return x


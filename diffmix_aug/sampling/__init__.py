"""Guided partial-noise sampling: the reference DDIM oracle, the fast sampler (DDIM and multistep solvers),
CUDA graphs, presets, the Synthesizer."""

from ._base import SamplingInterrupted
from .ddim import DDIMSampler, DDIMStepOutput, SolverTables
from .presets import DEFAULT_PRESET, PRESETS, make_sampler
from .reference import ReferenceDDIMSampler
from .synthesizer import Synthesizer

__all__ = ["DEFAULT_PRESET", "PRESETS", "DDIMSampler", "DDIMStepOutput", "ReferenceDDIMSampler", "SamplingInterrupted",
           "SolverTables", "Synthesizer", "make_sampler"]

"""Guided partial-noise DDIM sampling: the reference oracle, the fast sampler, CUDA graphs, the Synthesizer."""

from ._base import SamplingInterrupted
from .ddim import DDIMSampler, DDIMStepOutput, DDIMTables
from .presets import DEFAULT_PRESET, PRESETS, make_sampler
from .reference import ReferenceDDIMSampler
from .synthesizer import Synthesizer

__all__ = ["DEFAULT_PRESET", "PRESETS", "DDIMSampler", "DDIMStepOutput", "DDIMTables", "ReferenceDDIMSampler",
           "SamplingInterrupted", "Synthesizer", "make_sampler"]

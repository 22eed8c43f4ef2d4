"""Guided partial-noise DDIM sampling: the reference oracle, the fast sampler, CUDA graphs, the Synthesizer."""

from ._base import SamplingInterrupted
from .ddim import DDIMSampler, DDIMStepOutput, DDIMTables
from .reference import ReferenceDDIMSampler
from .synthesizer import Synthesizer

__all__ = ["DDIMSampler", "DDIMStepOutput", "DDIMTables", "ReferenceDDIMSampler", "SamplingInterrupted", "Synthesizer"]

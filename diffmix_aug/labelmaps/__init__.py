"""Custom label maps: condition encoding, enlarging maps, GradMix-style balancing maps."""

from .encode import encode_condition, encode_condition_torch, instance_edges, instance_edges_torch

__all__ = ["encode_condition", "encode_condition_torch", "instance_edges", "instance_edges_torch"]

"""Custom label maps: condition encoding, enlarging maps, GradMix-style balancing maps."""

from .balance import BalanceParams, apply_balance, balance_label_map, draw_balance_params
from .donors import DonorBank
from .encode import encode_condition, encode_condition_torch, instance_edges, instance_edges_torch
from .enlarge import EnlargeParams, apply_enlarge, draw_enlarge_params, enlarge_label_map
from .sampler import LabelMapParams, LabelMapResult, LabelMapSampler
from .settings import BalanceSettings, EnlargeSettings, borders_for_patch

__all__ = [
    "BalanceParams",
    "BalanceSettings",
    "DonorBank",
    "EnlargeParams",
    "EnlargeSettings",
    "LabelMapParams",
    "LabelMapResult",
    "LabelMapSampler",
    "apply_balance",
    "borders_for_patch",
    "apply_enlarge",
    "balance_label_map",
    "draw_balance_params",
    "draw_enlarge_params",
    "encode_condition",
    "encode_condition_torch",
    "enlarge_label_map",
    "instance_edges",
    "instance_edges_torch",
]

"""Diffusion math: schedules, respacing, q_sample, posterior, learned-range variance, hybrid loss."""

from .gaussian import (
    DiffusionTables,
    compute_tables,
    drop_labels,
    extract,
    learned_range_log_variance,
    predict_xstart_from_eps,
    q_posterior_mean_variance,
    q_sample,
    sample_timesteps,
)
from .losses import (
    discretized_gaussian_log_likelihood,
    hybrid_loss,
    mean_flat,
    normal_kl,
    training_losses,
    vb_terms_bpd,
)
from .schedule import BETA_SCHEDULES, get_beta_schedule, respaced_betas, space_timesteps

__all__ = [
    "BETA_SCHEDULES",
    "DiffusionTables",
    "compute_tables",
    "discretized_gaussian_log_likelihood",
    "drop_labels",
    "extract",
    "get_beta_schedule",
    "hybrid_loss",
    "learned_range_log_variance",
    "mean_flat",
    "normal_kl",
    "predict_xstart_from_eps",
    "q_posterior_mean_variance",
    "q_sample",
    "respaced_betas",
    "sample_timesteps",
    "space_timesteps",
    "training_losses",
    "vb_terms_bpd",
]

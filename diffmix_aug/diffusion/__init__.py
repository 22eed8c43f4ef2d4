"""Diffusion math: schedules, respacing, q_sample, posterior, learned-range variance, hybrid loss."""

from .schedule import BETA_SCHEDULES, get_beta_schedule, respaced_betas, space_timesteps

__all__ = ["BETA_SCHEDULES", "get_beta_schedule", "respaced_betas", "space_timesteps"]

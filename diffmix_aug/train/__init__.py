"""SDM training: config, data, loop (single process and DDP), EMA, checkpoints, export."""

from ..sdm.checkpoint import export_sdm
from .config import TrainConfig, load_train_config
from .loop import TrainResult, train_sdm

__all__ = ["TrainConfig", "TrainResult", "export_sdm", "load_train_config", "train_sdm"]

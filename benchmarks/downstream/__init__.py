"""HoVer-Net-style downstream network, targets, loss and post-processing for the ablation."""

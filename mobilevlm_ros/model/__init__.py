"""Model side: PyTorch reference of MobileVLM, checkpoint loading, synthetic checkpoints, export
(needs torch)."""

"""The training engine: SCN loss and relabeling, train/eval loops, checkpoints."""

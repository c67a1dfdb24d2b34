"""Training: the loop, the jitted step, losses, optimizer, checkpoints, metric logs, previews."""

"""What an audit or a training run reads: checkpoints, models, data, devices."""

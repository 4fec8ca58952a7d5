"""Teaching the model: the backends, the training rows, SFT, preference tuning, merging."""

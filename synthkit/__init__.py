"""synthkit: synthetic training data that teaches contrastive vision models."""

__version__ = "0.1.0"

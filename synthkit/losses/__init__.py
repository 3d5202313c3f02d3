"""Contrastive losses as pure functions."""

from synthkit.losses.nt_xent import nt_xent, nt_xent_per_view, per_sample_hardness

__all__ = ["nt_xent", "nt_xent_per_view", "per_sample_hardness"]

"""Backbones, projection heads and the contrastive encoder."""

from synthkit.encoders.backbones import build_backbone
from synthkit.encoders.model import Encoder, ProjectionHead, extract_features

__all__ = ["Encoder", "ProjectionHead", "build_backbone", "extract_features"]

"""Backbones, projection heads and the contrastive encoder."""

from synthkit.encoders.backbones import BACKBONES, build_backbone
from synthkit.encoders.model import Encoder, ProjectionHead, extract_features

__all__ = ["BACKBONES", "Encoder", "ProjectionHead", "build_backbone", "extract_features"]

"""Generators: conditional GAN (and, later, diffusion)."""

from synthkit.generators.cgan import Discriminator, Generator, build_cgan

__all__ = ["Discriminator", "Generator", "build_cgan"]

"""Contrastive objectives behind one interface (``base.Objective``): SimCLR, MoCo v2, and whatever registers.

``build_objective(cfg.objective, encoder, ...)`` builds the one named by ``objective.name`` through the
``OBJECTIVES`` registry (``synthkit.registry``); a new objective is one module plus one registry line.
"""

from synthkit.objectives.base import Objective, build_objective

__all__ = ["Objective", "build_objective"]

"""SimCLR's objective: NT-Xent over the batch (Chen et al., ICML 2020), with positive groups.

Every view's positives are the other views of its group; with groups of two this is NT-Xent view for view
(``losses/nt_xent.py``), with larger groups (a generated pair's four views) the supervised-contrastive form
(``losses/multi_positive.py``). SimCLR keeps no state between steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch

from synthkit.losses.multi_positive import multi_positive_nt_xent_per_view
from synthkit.losses.nt_xent import nt_xent_per_view
from synthkit.objectives.base import Objective


class SimCLR(Objective):
    name: ClassVar[str] = "simclr"

    def per_view(
        self,
        z: torch.Tensor,
        inputs: torch.Tensor | Sequence[torch.Tensor],
        groups: torch.Tensor,
        n_real: int,
        *,
        train: bool,
    ) -> torch.Tensor:
        m = z.shape[0] // 2
        if bool((groups[:m] == torch.arange(m, device=groups.device)).all()):  # every group: one image
            return nt_xent_per_view(*z.chunk(2), temperature=self.temperature)
        return multi_positive_nt_xent_per_view(z, groups, self.temperature)

"""SimCLR's objective: NT-Xent over the batch (Chen et al., ICML 2020), with positive groups.

Every view's positives are the other views of its group; with groups of two this is NT-Xent view for view
(``losses/nt_xent.py``), with larger groups (a generated pair's four views) the supervised-contrastive form
(``losses/multi_positive.py``). SimCLR keeps no state between steps. Under data parallelism the negatives are
the whole global batch, as in the paper: every process's projections are gathered (``synthkit.distributed``)
and each process scores its own views against all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch

from synthkit.distributed import gather_groups, gather_rows, world
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
        global_batch: bool = False,
    ) -> torch.Tensor:
        if global_batch and world()[1] > 1:  # this process's rows, against every process's
            z_all, rows = gather_rows(z.float())  # the loss is computed in float32 anyway
            return multi_positive_nt_xent_per_view(
                z_all, gather_groups(groups), self.temperature, anchors=rows
            )
        m = z.shape[0] // 2
        if bool((groups[:m] == torch.arange(m, device=groups.device)).all()):  # every group: one image
            return nt_xent_per_view(*z.chunk(2), temperature=self.temperature)
        return multi_positive_nt_xent_per_view(z, groups, self.temperature)

"""SimCLR's objective: NT-Xent over the batch (Chen et al., ICML 2020), with positive groups.

Every view's positives are the other views of its group; with groups of two this is NT-Xent view for view
(``losses/nt_xent.py``), with larger groups (a generated pair's four views) the supervised-contrastive form
(``losses/multi_positive.py``). SimCLR keeps no state between steps. Under data parallelism the negatives are
the whole global batch, as in the paper: every process's projections are gathered (``synthkit.distributed``)
and each process scores its own views against all of them. The loss is computed in float32 whatever the
autocast (``synthkit.losses``); the projections are gathered in float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch

from synthkit.distributed import gather_rows, global_groups, world
from synthkit.losses.multi_positive import multi_positive_nt_xent_per_view
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
        # one form for every batch: with groups of two views it is NT-Xent view for view, and choosing
        # the plain form would need the group ids read back from the device (a host sync every step).
        # The ids come from ``view_groups`` over two stacked view sets: every group holds two views or more
        # by construction, so the loss's own check (another host read) is off.
        if global_batch and world()[1] > 1:  # this process's rows, against every process's
            # equal shares by construction (``synthkit.distributed``): no exchange of sizes; gathered in
            # float32 so that the backward all-reduce sums the gradients in float32 too
            z_all, rows = gather_rows(z.float(), equal=True)
            return multi_positive_nt_xent_per_view(
                z_all, global_groups(groups), self.temperature, anchors=rows, validate=False
            )
        return multi_positive_nt_xent_per_view(z, groups, self.temperature, validate=False)

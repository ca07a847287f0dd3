"""`[settings.dynamics]`: what a run records for the one-run memorization estimators.

    [settings.dynamics]
    curvature_every = 0          # measure the input-loss curvature at epochs N, 2N, ...; 0: never
    curvature_h = 1e-3           # the finite-difference step along each direction
    curvature_directions = 10    # Rademacher directions per example and measured epoch

Imported by the entry module, so it imports attrs and the API's validators only.
"""

from __future__ import annotations

import attrs

from spurcore.api import non_negative, positive

SETTINGS_KEY = "dynamics"  # the observer's name and its table


@attrs.frozen(kw_only=True)
class DynamicsSettings:
    curvature_every: int = attrs.field(default=0, validator=non_negative)
    curvature_h: float = attrs.field(default=1e-3, validator=positive)
    curvature_directions: int = attrs.field(default=10, validator=positive)

    def measures_curvature(self, epoch: int) -> bool:
        return self.curvature_every > 0 and epoch % self.curvature_every == 0

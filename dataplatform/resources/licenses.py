"""The license policy as a Dagster resource: one allow-list for the whole deployment."""

from __future__ import annotations

import dagster as dg

from dataplatform.core.ingest.license_policy import DEFAULT_ALLOW, LicensePolicy


class LicensePolicyResource(dg.ConfigurableResource):
    """Which licenses may enter training, and what happens to pairs outside the list or with none.

    A deployment-wide resource rather than per-run config, so that scheduled, sensor and
    backfill runs all apply the same policy; the runs record it in their metadata.
    """

    allow: list[str] = list(DEFAULT_ALLOW)
    """``fnmatch`` patterns over normalised license names (``cc-by-4.0``, ``cc0-1.0``, ...)."""
    on_not_allowed: str = "drop"
    """``drop`` (ledger reason license_not_allowed) or ``flag`` (kept, status not_allowed)."""
    on_missing: str = "flag"
    """``drop`` (reason license_missing) or ``flag`` (kept, license_status missing)."""

    def policy(self) -> LicensePolicy:
        try:
            return LicensePolicy(tuple(self.allow), self.on_not_allowed, self.on_missing)
        except ValueError as exc:
            raise dg.Failure(f"licenses resource: {exc}") from exc

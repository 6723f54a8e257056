"""License policy: which licenses may enter the training set, and what happens to the rest.

Web manifests spell one license many ways ("CC BY 4.0", "cc-by-4.0", a creativecommons.org
URL), so licenses are normalised to one spelling before the allow-list (``fnmatch`` patterns
over normalised names) is applied. A pair whose license is outside the list, or that has none,
is dropped to the ledger or kept and flagged, as the policy says; either way the decision is in
the data (``license_status``), so a data card can show it and a query can count it.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

import pyarrow as pa

from dataplatform.core.store.schema import ledger_row, ledger_table

ALLOWED = "allowed"
NOT_ALLOWED = "not_allowed"
MISSING = "missing"
ACTIONS = ("drop", "flag")
REASONS = {NOT_ALLOWED: "license_not_allowed", MISSING: "license_missing"}

# Open licenses that permit training and redistribution; NC and ND variants are not in it
# ("cc-by-[0-9]*" matches cc-by-4.0 but not cc-by-nc-4.0).
DEFAULT_ALLOW: tuple[str, ...] = (
    "cc0*",
    "pdm*",
    "public-domain",
    "cc-by-[0-9]*",
    "cc-by-sa-[0-9]*",
    "mit",
    "apache-2.0",
)
_MISSING_WORDS = {"", "unknown", "none", "null", "n/a", "na", "-", "?", "unspecified"}
_CC_URL = re.compile(
    r"creativecommons\.org/(?:licenses/(?P<kind>[a-z-]+)/(?P<ver>[0-9.]+)"
    r"|publicdomain/(?P<pd>zero|mark)/(?P<pdver>[0-9.]+))"
)


def normalize_license(value: str | None) -> str | None:
    """One spelling per license (``cc-by-sa-4.0``, ``cc0-1.0``, ``pdm-1.0``); None if missing."""
    if value is None:
        return None
    text = value.strip().lower()
    if text in _MISSING_WORDS:
        return None
    match = _CC_URL.search(text)
    if match:
        if match.group("pd"):
            name = "cc0" if match.group("pd") == "zero" else "pdm"
            return f"{name}-{match.group('pdver')}"
        return f"cc-{match.group('kind')}-{match.group('ver')}"
    text = re.sub(r"[\s_/]+", "-", text)
    text = re.sub(r"-+", "-", text).strip("-")
    text = re.sub(r"^cc-?0", "cc0", text)
    text = re.sub(r"^(cc-by[a-z-]*?)-?(\d)", r"\1-\2", text)
    return text


@dataclass(frozen=True)
class LicensePolicy:
    allow: tuple[str, ...] = DEFAULT_ALLOW
    on_not_allowed: str = "drop"
    on_missing: str = "flag"

    def __post_init__(self) -> None:
        for name in ("on_not_allowed", "on_missing"):
            if getattr(self, name) not in ACTIONS:
                raise ValueError(f"{name} must be one of {ACTIONS}, got {getattr(self, name)!r}")
        patterns = tuple(p for p in (normalize_license(a) for a in self.allow) if p)
        object.__setattr__(self, "allow", patterns)

    def status(self, license_value: str | None) -> str:
        normalized = normalize_license(license_value)
        if normalized is None:
            return MISSING
        if any(fnmatch.fnmatchcase(normalized, p) for p in self.allow):
            return ALLOWED
        return NOT_ALLOWED

    def action(self, status: str) -> str:
        if status == ALLOWED:
            return "keep"
        return self.on_missing if status == MISSING else self.on_not_allowed

    def describe(self) -> str:
        return (
            f"allow {', '.join(self.allow)}; not allowed: {self.on_not_allowed}; "
            f"missing: {self.on_missing}"
        )


def apply_license_policy(
    pairs: pa.Table, policy: LicensePolicy, stage: str
) -> tuple[pa.Table, pa.Table]:
    """``pairs`` with ``license_status`` added, minus the dropped rows; and their ledger rows."""
    rows = pairs.to_pylist()
    statuses = [policy.status(r["license"]) for r in rows]
    keep = [k for k, s in enumerate(statuses) if policy.action(s) != "drop"]
    ledger = []
    for row, status in zip(rows, statuses, strict=True):
        if policy.action(status) != "drop":
            continue
        shown = "none" if status == MISSING else repr(row["license"])
        ledger.append(
            ledger_row(
                row,
                stage,
                REASONS[status],
                f"license {shown} (normalised {normalize_license(row['license'])}) "
                f"is not in the allow-list: {', '.join(policy.allow)}",
            )
        )
    kept = pairs.append_column("license_status", pa.array(statuses, pa.string()))
    return kept.take(pa.array(keep, pa.int64())), ledger_table(ledger)

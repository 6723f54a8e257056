"""Review sheets in asset metadata: links a reviewer opens from the Dagster UI.

The UI cannot open a ``file://`` link, and a deployed webserver's reviewer does not have the
file: the link is the review server's URL (``dataplatform.review_server``, at
``DATAPLATFORM_REVIEW_URL``), and the file's path is reported as a path beside it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import dagster as dg

from dataplatform.core.records.review_sheet import (
    INDEX_NAME,
    REVIEW_URL_ENV,
    render_partition_review,
    render_review_index,
    render_review_sheet,
    sheet_url,
)
from dataplatform.core.store.home import Home
from dataplatform.core.store.stages import STAGE_ORDER

# The keys under which the dedup stages report the threshold they ran with.
THRESHOLD_KEYS = ("threshold_bits", "threshold")


def review_base_url() -> str | None:
    """The review server's address as reviewers reach it, from ``DATAPLATFORM_REVIEW_URL``."""
    url = os.environ.get(REVIEW_URL_ENV, "").strip()
    if url and not url.startswith(("http://", "https://")):
        raise ValueError(
            f"{REVIEW_URL_ENV}={url!r} is not an http(s) URL: set it to the review server's "
            "address as a reviewer's browser reaches it, e.g. http://127.0.0.1:8070"
        )
    return url or None


def stage_threshold(stage_metadata: Mapping[str, object] | None) -> float | None:
    """The threshold a stage's own metadata reports (``threshold_bits`` or ``threshold``)."""
    for key in THRESHOLD_KEYS:
        value = (stage_metadata or {}).get(key)
        value = getattr(value, "value", value)  # a MetadataValue or a plain number
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


def review_sheet_metadata(
    home: Home,
    stage: str | Sequence[str],
    date: str,
    stage_metadata: Mapping[str, object] | None = None,
) -> dict[str, dg.MetadataValue]:
    """Render review sheets of ``date`` and return metadata linking to them.

    One stage: its sheet is rendered (with the threshold its ``stage_metadata`` reports, for
    the near-miss band) and the date's index refreshed; the metadata is ``review_sheet_path``
    and, with ``DATAPLATFORM_REVIEW_URL`` set, ``review_sheet_url``. A list of stages: every
    sheet of the date and the index are rendered, as ``review_sheets_path`` and
    ``review_sheets_url``, pointing at the index that links them all. A sheet that could not
    be rendered is ``review_sheet`` (or ``review_sheets``): "not rendered: why".
    """
    key = "review_sheet" if isinstance(stage, str) else "review_sheets"
    if home.warehouse_url:
        # The sheets are files under a local warehouse; there is none to render them into.
        return {
            key: dg.MetadataValue.text(f"not rendered: the warehouse is on {home.warehouse_url}")
        }
    try:
        if isinstance(stage, str):
            path = render_review_sheet(home, stage, date, threshold=stage_threshold(stage_metadata))
            render_review_index(home, date, STAGE_ORDER)
            name = stage
        else:
            path = render_partition_review(home, date, list(stage))[-1]
            name = INDEX_NAME
    except Exception as exc:  # noqa: BLE001 - a review document never fails the curation run
        # The stage's tables and ledger are already written; the metadata says what went wrong.
        return {key: dg.MetadataValue.text(f"not rendered: {type(exc).__name__}: {exc}")}
    metadata = {f"{key}_path": dg.MetadataValue.path(str(path))}
    try:
        base_url = review_base_url()
    except ValueError as exc:
        metadata[f"{key}_url"] = dg.MetadataValue.text(f"not linked: {exc}")
        return metadata
    if base_url:
        metadata[f"{key}_url"] = dg.MetadataValue.url(sheet_url(base_url, date, name))
    return metadata

"""Review sheets in asset metadata: links a reviewer opens from the Dagster UI."""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg

from dataplatform.core.records.review_sheet import (
    render_partition_review,
    render_review_index,
    render_review_sheet,
)
from dataplatform.core.store.home import Home
from dataplatform.core.store.stages import STAGE_ORDER


def review_sheet_metadata(
    home: Home, stage: str | Sequence[str], date: str
) -> dict[str, dg.MetadataValue]:
    """Render review sheets of ``date`` and return metadata linking to them.

    One stage: its sheet is rendered and the date's index refreshed; the metadata is
    ``review_sheet`` (the path) and ``review_sheet_url`` (file://, opens in a browser).
    A list of stages: every sheet of the date and the index are rendered; the metadata is
    ``review_sheets`` and ``review_sheets_url``, pointing at the index that links them all.
    """
    if home.warehouse_url:
        # The sheets are files to open from disk; they are rendered for a local warehouse only.
        return {"review_sheet": f"not rendered: the warehouse is on {home.warehouse_url}"}
    key = "review_sheet" if isinstance(stage, str) else "review_sheets"
    try:
        if isinstance(stage, str):
            path = render_review_sheet(home, stage, date)
            render_review_index(home, date, STAGE_ORDER)
        else:
            path = render_partition_review(home, date, list(stage))[-1]
    except Exception as exc:  # noqa: BLE001 - a review document never fails the curation run
        # The stage's tables and ledger are already written; the metadata says what went wrong.
        return {key: f"not rendered: {type(exc).__name__}: {exc}"}
    return {
        key: dg.MetadataValue.path(str(path)),
        f"{key}_url": dg.MetadataValue.url(path.resolve().as_uri()),
    }

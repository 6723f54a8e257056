"""Re-render the documents derived from the tables: dataset cards and review sheets.

A takedown rewrites tables after their cards and sheets were written; the documents must then
be rendered again so that no card counts, and no sheet shows, a pair that was taken down.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from dataplatform.core.records.data_cards import StageRun, card_folder, write_dataset_card
from dataplatform.core.records.review_rows import review_dates_showing
from dataplatform.core.records.review_sheet import render_partition_review
from dataplatform.core.store.home import Home
from dataplatform.core.store.warehouse import document_exists, document_path, read_document


def recorded_runs(home: Home, date: str) -> list[StageRun]:
    """The stage runs the partition's dataset card recorded when ``data_cards`` last ran."""
    relative = f"{card_folder(date)}/card.json"
    if not document_exists(home, relative):
        return []
    card = json.loads(read_document(home, relative))
    return [StageRun(**r) for r in card.get("stage_runs", [])]


def refresh_documents(
    home: Home, dates: Sequence[str], pair_ids: Sequence[str], stages: Sequence[str]
) -> list[Path]:
    """Render anew the dataset cards of ``dates`` (and overall) and every review sheet that
    shows one of ``pair_ids`` (on its own date, or as the original of a later copy).

    Each day's card rewrites that day's summary before the overall card merges the summaries;
    a carded day without a card here is caught by its stale stamp and rebuilt by the merge.
    """
    written: list[Path] = []
    for date in sorted(set(dates)):
        if document_exists(home, f"{card_folder(date)}/card.json"):
            card = write_dataset_card(home, stages, date, recorded_runs(home, date))
            written.append(document_path(home, f"{card.folder}/card.md"))
    if not home.warehouse_url:  # review sheets are rendered for a local warehouse only
        sheet_dates = set(dates) | set(review_dates_showing(home, pair_ids))
        for date in sorted(sheet_dates):
            written.extend(render_partition_review(home, date, list(stages)))
    overall = write_dataset_card(home, stages, None)
    written.append(document_path(home, f"{overall.folder}/card.md"))
    return written

"""The pipeline's stage tables in order, importable without Dagster (for the CLI's audit)."""

STAGE_ORDER: list[str] = [
    "raw_pairs",
    "exact_deduped",
    "phash_deduped",
    "clip_scored",
    "quality_filtered",
    "semantic_deduped",
    "tokens",
    "data_cards",
]

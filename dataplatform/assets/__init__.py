"""One module per pipeline stage; each is thin: read input, call core, write output, report."""

from dataplatform.assets.clip_scored import clip_scored
from dataplatform.assets.data_cards import data_cards
from dataplatform.assets.exact_deduped import exact_deduped
from dataplatform.assets.phash_deduped import phash_deduped
from dataplatform.assets.quality_filtered import quality_filtered
from dataplatform.assets.raw_pairs import raw_pairs
from dataplatform.assets.semantic_deduped import semantic_deduped
from dataplatform.assets.tokens import tokens
from dataplatform.assets.url_downloads import url_downloads
from dataplatform.assets.vq_tokenizer import vq_tokenizer
from dataplatform.core.store.stages import STAGE_ORDER

# Before the stages: a URL manifest's images are fetched once, into shards raw_pairs reads.
INGEST_ASSETS = [url_downloads]
STAGE_ASSETS = [
    raw_pairs,
    exact_deduped,
    phash_deduped,
    clip_scored,
    quality_filtered,
    semantic_deduped,
]
# The tokenizer is trained once on curated images (not per day) and reused by `tokens`.
TOKEN_ASSETS = [vq_tokenizer, tokens]
# The last gate: cards are written for what was tokenized, minus takedowns filed since.
CARD_ASSETS = [data_cards]
ALL_ASSETS = INGEST_ASSETS + STAGE_ASSETS + TOKEN_ASSETS + CARD_ASSETS
if [a.node_def.name for a in STAGE_ASSETS] + ["tokens", "data_cards"] != STAGE_ORDER:
    raise RuntimeError(
        "dataplatform.core.store.stages.STAGE_ORDER does not match the asset modules"
    )

__all__ = [
    "ALL_ASSETS",
    "CARD_ASSETS",
    "INGEST_ASSETS",
    "STAGE_ASSETS",
    "TOKEN_ASSETS",
    "STAGE_ORDER",
    "clip_scored",
    "data_cards",
    "exact_deduped",
    "phash_deduped",
    "quality_filtered",
    "raw_pairs",
    "semantic_deduped",
    "tokens",
    "url_downloads",
    "vq_tokenizer",
]

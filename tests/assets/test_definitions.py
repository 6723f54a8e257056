import subprocess
import sys

HEAVY = ("torch", "open_clip", "onnxruntime", "faiss", "cv2", "timm", "nudenet")


def test_code_location_loads_without_heavy_imports():
    """Dagster imports the code location in every step process: it must start in seconds."""
    code = (
        "import sys, dataplatform.definitions as d; "
        "d.defs.resolve_asset_graph(); "
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""


def test_every_stage_asset_and_its_checks_are_defined():
    from dataplatform.assets import STAGE_ORDER
    from dataplatform.definitions import defs

    graph = defs.resolve_asset_graph()
    assert STAGE_ORDER == [
        "raw_pairs",
        "exact_deduped",
        "phash_deduped",
        "clip_scored",
        "quality_filtered",
        "semantic_deduped",
        "tokens",
        "data_cards",
    ]
    keys = {k.path[-1] for k in graph.get_all_asset_keys()}
    assert set(STAGE_ORDER) | {"vq_tokenizer"} <= keys
    checks = {(c.asset_key.path[-1], c.name) for c in graph.asset_check_keys}
    assert ("phash_deduped", "no_kept_pair_within_threshold") in checks
    assert ("semantic_deduped", "no_kept_pair_above_similarity") in checks
    assert ("clip_scored", "embeddings_unit_norm") in checks
    assert ("quality_filtered", "scores_in_range") in checks
    assert all((stage, "rows_conserved") in checks for stage in STAGE_ORDER)
    assert ("vq_tokenizer", "heldout_psnr_floor") in checks
    assert ("data_cards", "cards_complete") in checks

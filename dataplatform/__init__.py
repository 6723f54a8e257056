"""dataplatform: curated, deduplicated, audited image-text training sets, run by Dagster."""

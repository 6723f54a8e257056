"""dataplatform: curated, deduplicated, audited image-text training sets, orchestrated by Dagster."""

"""Pure logic of the platform: no Dagster import, tested directly."""

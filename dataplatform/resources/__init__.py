"""Dagster resources: storage today; the CLIP model, tokenizer and scorers join them here."""

from dataplatform.resources.warehouse import WarehouseResource

__all__ = ["WarehouseResource"]

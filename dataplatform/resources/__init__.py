"""Dagster resources: the warehouse, the CLIP model; the tokenizer and scorers join them."""

from dataplatform.resources.clip import ClipResource
from dataplatform.resources.warehouse import WarehouseResource

__all__ = ["ClipResource", "WarehouseResource"]

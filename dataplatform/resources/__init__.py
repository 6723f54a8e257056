"""Dagster resources: the warehouse, the CLIP model, the quality scorers, the tokenizer."""

from dataplatform.resources.clip import ClipResource
from dataplatform.resources.quality import QualityResource
from dataplatform.resources.tokenizer import TokenizerResource
from dataplatform.resources.warehouse import WarehouseResource

__all__ = ["ClipResource", "QualityResource", "TokenizerResource", "WarehouseResource"]

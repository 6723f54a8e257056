"""Dagster resources: the warehouse, the CLIP model, the quality scorers."""

from dataplatform.resources.clip import ClipResource
from dataplatform.resources.quality import QualityResource
from dataplatform.resources.warehouse import WarehouseResource

__all__ = ["ClipResource", "QualityResource", "WarehouseResource"]

"""Dagster resources: warehouse, license policy, CLIP model, quality scorers, tokenizer."""

from dataplatform.resources.clip import ClipResource
from dataplatform.resources.licenses import LicensePolicyResource
from dataplatform.resources.quality import QualityResource
from dataplatform.resources.tokenizer import TokenizerResource
from dataplatform.resources.warehouse import WarehouseResource

__all__ = [
    "ClipResource",
    "LicensePolicyResource",
    "QualityResource",
    "TokenizerResource",
    "WarehouseResource",
]

"""Dagster resources: warehouse, license policy, CLIP model, quality scorers, tokenizer, engine."""

from dataplatform.resources.clip import ClipResource
from dataplatform.resources.engine import EngineResource
from dataplatform.resources.licenses import LicensePolicyResource
from dataplatform.resources.quality import QualityResource
from dataplatform.resources.tokenizer import TokenizerResource
from dataplatform.resources.warehouse import WarehouseResource

__all__ = [
    "ClipResource",
    "EngineResource",
    "LicensePolicyResource",
    "QualityResource",
    "TokenizerResource",
    "WarehouseResource",
]

"""The clip resource: the smoke profile swaps in the built-in model; importing stays light."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dataplatform.core.scoring.clip_model import SMOKE_MODEL_NAME, ClipSpec
from dataplatform.resources.clip import ClipResource

ROOT = Path(__file__).resolve().parents[2]
CONFIGURED = {
    "model": "ViT-B-16",
    "pretrained": "/models/vit-b-16.bin",
    "device": "cpu",
    "precision": "bf16",
    "batch_size": 16,
    "num_workers": 1,
}


def test_smoke_profile_uses_the_built_in_model_under_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    monkeypatch.setenv("DATAPLATFORM_PROFILE", "smoke")
    monkeypatch.setenv("DATAPLATFORM_HOME", str(tmp_path))
    resource = ClipResource(**CONFIGURED)
    assert resource.is_smoke()
    checkpoint = tmp_path / "models" / "dataplatform-smoke-clip.pt"
    assert resource.spec() == ClipSpec(
        model=SMOKE_MODEL_NAME,
        pretrained=str(checkpoint),
        device="cpu",
        precision="bf16",
        batch_size=16,
        num_workers=1,
    )
    assert checkpoint.is_file()

    elsewhere = tmp_path / "elsewhere"
    spec = ClipResource(models_dir=str(elsewhere)).spec()
    assert spec.pretrained == str(elsewhere / "dataplatform-smoke-clip.pt")


def test_production_profile_uses_the_configured_model(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    monkeypatch.delenv("DATAPLATFORM_PROFILE", raising=False)
    monkeypatch.setenv("DATAPLATFORM_HOME", str(tmp_path))
    resource = ClipResource(**CONFIGURED)
    assert not resource.is_smoke()
    assert resource.spec() == ClipSpec(**CONFIGURED)
    assert ClipResource().spec() == ClipSpec()
    assert not (tmp_path / "models").exists()


def test_importing_the_resource_does_not_import_torch():
    code = (
        "import dataplatform.resources.clip, dataplatform.core.scoring.clip_model, sys; "
        "assert 'torch' not in sys.modules, 'torch imported'; "
        "assert 'open_clip' not in sys.modules, 'open_clip imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr

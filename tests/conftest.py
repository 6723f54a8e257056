"""Shared fixtures: real photographs from the scikit-image and scikit-learn wheels."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

SKIMAGE_DATA = Path(__import__("skimage").__file__).parent / "data"
SKLEARN_IMAGES = Path(__import__("sklearn").__file__).parent / "datasets" / "images"
PEERDATA = Path(__file__).resolve().parents[1].parent / "shared" / "peerdata"


def photo(name: str) -> Image.Image:
    """A real photo by name: skimage's data files, or sklearn's china/flower."""
    for folder in (SKIMAGE_DATA, SKLEARN_IMAGES):
        for suffix in (".png", ".jpg"):
            path = folder / f"{name}{suffix}"
            if path.is_file():
                with Image.open(path) as im:
                    return im.convert("RGB") if im.mode not in ("RGB", "L") else im.copy()
    raise FileNotFoundError(name)


def encode(image: Image.Image, fmt: str = "JPEG", **params) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **params)
    return buf.getvalue()


@pytest.fixture
def astronaut() -> Image.Image:
    return photo("astronaut")

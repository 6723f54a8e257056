"""OCR on real images from the scikit-image wheel: a scanned page, a photo of handwriting."""

from __future__ import annotations

import math

import pytest
from PIL import Image

from dataplatform.core.scoring.ocr_readability import (
    MAX_LONG_SIDE,
    MAX_SHORT_SIDE,
    OcrResult,
    OcrScorer,
    covered_fraction,
    downscale,
    load_ocr,
)
from tests.conftest import photo


@pytest.fixture(scope="module")
def scorer() -> OcrScorer:
    return load_ocr()


def test_engine_loads_once(scorer: OcrScorer) -> None:
    assert load_ocr() is scorer


def test_reads_the_scanned_page(scorer: OcrScorer) -> None:
    (page,) = scorer.read([photo("page")])
    assert page.error is None
    assert page.lines == 5
    lines = page.text.lower().split(" | ")
    assert len(lines) == page.lines
    # Reading order: the heading first, the last line of the paragraph last.
    assert "segmentation" in lines[0]
    assert "let us first determine markers of the coins" in lines[1]
    assert "histogram" in lines[-1]
    for word in ("markers", "pixels", "unambiguously", "background"):
        assert word in page.text.lower()
    assert 0.3 < page.text_area < 0.5
    assert page.confidence is not None
    assert 0.9 < page.confidence <= 1.0


def test_reads_the_photo_of_handwriting(scorer: OcrScorer) -> None:
    (text,) = scorer.read([photo("text")])
    assert text.error is None
    # Handwritten formulae at an angle: the model reads the "s =" at the top and little else.
    assert "s=" in text.text.lower()
    assert text.lines >= 1
    assert 0.0 < text.text_area < 0.5
    assert text.confidence is not None
    assert 0.5 <= text.confidence <= 1.0


def test_photos_without_text_read_nothing(scorer: OcrScorer) -> None:
    plain = Image.new("RGB", (640, 480), (40, 120, 200))
    assert (
        scorer.read([photo("moon"), plain])
        == [
            OcrResult(text="", text_area=0.0, confidence=None, lines=0),
        ]
        * 2
    )


def test_odd_inputs_do_not_raise(scorer: OcrScorer) -> None:
    palette = photo("page").convert("RGB").convert("P")
    tiny = Image.new("RGB", (1, 1), (255, 0, 0))
    broken = Image.new("RGB", (0, 0))
    from_palette, from_tiny, from_broken = scorer.read([palette, tiny, broken])
    assert "segmentation" in from_palette.text.lower()
    assert from_tiny == OcrResult(text="", text_area=0.0, confidence=None, lines=0)
    assert from_broken.error is not None
    assert math.isnan(from_broken.text_area)
    assert from_broken.lines == 0
    assert scorer.read([]) == []


def test_downscale_keeps_the_detector_resolution() -> None:
    assert downscale(Image.new("RGB", (4000, 3000))).size == (981, MAX_SHORT_SIDE)
    assert downscale(Image.new("RGB", (8000, 1000))).size == (MAX_LONG_SIDE, 250)
    small = Image.new("RGB", (640, 480))
    assert downscale(small) is small


def test_covered_fraction_counts_overlaps_once() -> None:
    square = [(0, 0), (49, 0), (49, 49), (0, 49)]
    assert covered_fraction([square], (100, 100)) == 0.25
    assert covered_fraction([square, square], (100, 100)) == 0.25
    assert covered_fraction([], (100, 100)) == 0.0

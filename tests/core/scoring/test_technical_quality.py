import pytest
from PIL import Image, ImageFilter

from dataplatform.core.scoring.quality_rules import QualityThresholds
from dataplatform.core.scoring.technical_quality import TechnicalScores, technical_scores
from tests.conftest import photo

# The natural photos in the scikit-image and scikit-learn wheels (the module docstring's table).
PHOTOS = (
    "astronaut",
    "brick",
    "camera",
    "chelsea",
    "china",
    "coffee",
    "coins",
    "flower",
    "grass",
    "gravel",
    "horse",
    "hubble_deep_field",
    "moon",
    "motorcycle_left",
    "retina",
    "rocket",
)


@pytest.fixture(scope="module")
def blur_pairs() -> dict[str, tuple[float, float]]:
    pairs = {}
    for name in PHOTOS:
        image = photo(name)
        blurred = image.filter(ImageFilter.GaussianBlur(radius=3))
        pairs[name] = (
            technical_scores(image).blur_variance,
            technical_scores(blurred).blur_variance,
        )
    return pairs


def test_blurring_lowers_blur_variance_for_every_photo(blur_pairs):
    assert [name for name, (sharp, blurred) in blur_pairs.items() if blurred >= sharp] == []
    assert len(blur_pairs) == 16


def test_default_blur_threshold_separates_sharp_from_blurred(blur_pairs):
    cut = QualityThresholds().min_blur_variance
    assert [name for name, (sharp, _) in blur_pairs.items() if sharp < cut] == []
    assert [name for name, (_, blurred) in blur_pairs.items() if blurred >= cut] == []
    # The margins the module docstring documents.
    assert round(min(sharp for sharp, _ in blur_pairs.values()), 1) == 65.1
    assert round(max(blurred for _, blurred in blur_pairs.values()), 1) == 16.6


def test_real_motion_blurred_photo_is_below_the_default():
    score = technical_scores(photo("clock_motion")).blur_variance
    assert score < QualityThresholds().min_blur_variance
    assert round(score, 1) == 24.3


def test_blur_variance_is_comparable_across_resolutions():
    image = photo("hubble_deep_field")
    scores = [
        technical_scores(image.resize((width, width * 872 // 1000), Image.Resampling.LANCZOS))
        for width in (2000, 1000, 750)
    ]
    assert [round(score.blur_variance) for score in scores] == [1106, 1087, 1101]


def test_small_photos_are_measured_at_native_size():
    # At DataComp's 200 px minimum, sharp photos stay above the default and blurred ones below.
    cut = QualityThresholds().min_blur_variance
    sharp, blurred = [], []
    for name in PHOTOS:
        image = photo(name)
        scale = 200 / min(image.size)
        small = image.resize(
            (round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS
        )
        sharp.append(technical_scores(small).blur_variance)
        blurred.append(technical_scores(small.filter(ImageFilter.GaussianBlur(3))).blur_variance)
    assert round(min(sharp), 1) == 110.5
    assert round(max(blurred), 1) == 9.0
    assert min(sharp) >= cut > max(blurred)


def test_all_white_image_is_fully_clipped():
    scores = technical_scores(Image.new("RGB", (64, 48), (255, 255, 255)))
    assert scores == TechnicalScores(
        shortest_side=48, aspect_ratio=64 / 48, blur_variance=0.0, clipped_fraction=1.0
    )


def test_clipping_counts_levels_up_to_2_and_from_253():
    image = Image.new("L", (4, 1))
    image.putdata([2, 3, 252, 253])
    assert technical_scores(image.convert("RGB")).clipped_fraction == 0.5


def test_wide_image_size_and_aspect():
    scores = technical_scores(Image.new("RGB", (300, 100), (120, 80, 40)))
    assert scores.shortest_side == 100
    assert scores.aspect_ratio == 3.0
    assert scores.blur_variance == 0.0
    assert scores.clipped_fraction == 0.0


def test_tall_image_aspect_is_long_over_short():
    scores = technical_scores(Image.new("RGB", (100, 300), (120, 80, 40)))
    assert (scores.shortest_side, scores.aspect_ratio) == (100, 3.0)


def test_original_size_overrides_a_reduced_decode():
    image = photo("astronaut")
    reduced = image.resize((128, 128))
    scores = technical_scores(reduced, width=1024, height=512)
    assert scores.shortest_side == 512
    assert scores.aspect_ratio == 2.0
    assert scores.blur_variance == technical_scores(reduced).blur_variance


def test_width_without_height_is_refused():
    with pytest.raises(ValueError, match="both width and height"):
        technical_scores(Image.new("RGB", (10, 10)), width=10)


def test_non_positive_size_is_refused():
    with pytest.raises(ValueError, match="positive"):
        technical_scores(Image.new("RGB", (10, 10)), width=0, height=10)


def test_tiny_image_has_no_measurable_detail():
    assert technical_scores(Image.new("RGB", (1, 1))).blur_variance == 0.0

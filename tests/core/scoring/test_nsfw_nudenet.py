"""NudeNet scores on real photos from the scikit-image and scikit-learn wheels."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from dataplatform.core.scoring.nsfw_nudenet import LABELS, NudeNetScorer, load_nudenet, nsfw_score
from tests.conftest import photo

SAFE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "china", "flower")


@pytest.fixture(scope="module")
def scorer() -> NudeNetScorer:
    return load_nudenet()


def test_model_loads_once(scorer: NudeNetScorer) -> None:
    assert load_nudenet() is scorer


def test_labels_are_the_installed_models() -> None:
    import nudenet.nudenet

    assert tuple(vars(nudenet.nudenet)["__labels"]) == LABELS


def test_everyday_photos_are_safe(scorer: NudeNetScorer) -> None:
    results = scorer.score([photo(name) for name in SAFE_PHOTOS])
    assert len(results) == len(SAFE_PHOTOS)
    for name, (score, detections) in zip(SAFE_PHOTOS, results, strict=True):
        assert 0.0 <= score < 0.1, name
        for detection in json.loads(detections):
            assert detection["class"] in LABELS
            assert 0.25 <= detection["score"] <= 1.0


def test_faces_are_found_where_the_reference_detector_finds_them(scorer: NudeNetScorer) -> None:
    from nudenet import NudeDetector

    reference = NudeDetector()
    for name, face in (("astronaut", "FACE_FEMALE"), ("camera", "FACE_MALE")):
        image = photo(name).convert("RGB")
        ((_, found),) = scorer.score([image])
        ours = {d["class"]: d for d in json.loads(found)}
        # NudeDetector reads files as BGR; an array in that order takes the same path.
        theirs = {d["class"]: d for d in reference.detect(np.asarray(image)[:, :, ::-1].copy())}
        assert set(ours) == set(theirs) == {face}
        # Pillow's antialiased resize and cv2's differ a little; the boxes agree to a few pixels.
        assert ours[face]["score"] == pytest.approx(theirs[face]["score"], abs=0.1)
        assert ours[face]["box"] == pytest.approx(theirs[face]["box"], abs=8)


def test_batches_give_the_same_scores_as_single_images(scorer: NudeNetScorer) -> None:
    images = [photo("astronaut"), photo("camera"), photo("coffee")]
    batched = NudeNetScorer(scorer._session, batch_size=2).score(images)
    single = [scorer.score([image])[0] for image in images]
    assert [json.loads(d) for _, d in batched] == [json.loads(d) for _, d in single]


def test_score_is_the_highest_exposed_detection() -> None:
    detections = [
        {"class": "FACE_FEMALE", "score": 0.9, "box": [0, 0, 1, 1]},
        {"class": "BUTTOCKS_EXPOSED", "score": 0.4, "box": [0, 0, 1, 1]},
        {"class": "FEMALE_BREAST_EXPOSED", "score": 0.7, "box": [0, 0, 1, 1]},
        {"class": "FEMALE_BREAST_COVERED", "score": 0.8, "box": [0, 0, 1, 1]},
    ]
    assert nsfw_score(detections) == 0.7
    assert nsfw_score(detections[:1]) == 0.0
    assert nsfw_score([]) == 0.0


def test_odd_inputs_do_not_raise(scorer: NudeNetScorer) -> None:
    palette = photo("coffee").convert("P")
    tiny = Image.new("RGB", (1, 1), (255, 0, 0))
    grey = photo("camera")
    broken = Image.new("RGB", (0, 0))
    results = scorer.score([palette, tiny, grey, broken])
    assert [score for score, _ in results[:3]] == [0.0, 0.0, 0.0]
    assert json.loads(results[1][1]) == []
    score, detections = results[3]
    assert math.isnan(score)
    assert detections.startswith("error: ")
    assert scorer.score([]) == []

"""docker/compose.yaml's review-server: the code location's image serving the review sheets."""

from dataplatform.review_server import DEFAULT_PORT
from tests.e2e.test_deployment import _resolved


def test_the_review_server_serves_the_home_read_only_beside_the_webserver():
    services = _resolved("docker/compose.yaml")["services"]
    review = services["review-server"]
    assert review["image"] == services["code-location"]["image"]
    assert review["command"][:3] == ["python", "-m", "dataplatform.review_server"]
    assert f"--port={DEFAULT_PORT}" in review["command"]
    (mount,) = review["volumes"]
    assert (mount["source"], mount["target"], mount["read_only"]) == (
        "dataplatform-home",
        "/data",
        True,
    )
    assert review["environment"] == {
        "DATAPLATFORM_HOME": "/data",
        "DATAPLATFORM_REVIEW_URL": f"http://localhost:{DEFAULT_PORT}",
    }
    assert review["ports"][0]["target"] == DEFAULT_PORT
    assert review["healthcheck"]["test"][:2] == ["CMD", "python"]
    assert review["restart"] == "unless-stopped"
    named = _resolved("docker/compose.yaml", DATAPLATFORM_REVIEW_URL="http://reviews.example:80")
    assert named["services"]["review-server"]["environment"]["DATAPLATFORM_REVIEW_URL"] == (
        "http://reviews.example:80"
    )

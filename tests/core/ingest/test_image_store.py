import io
import tarfile
from pathlib import Path

import pytest

from dataplatform.core.ingest.image_store import location_of, read_location
from dataplatform.core.ingest.landing import discover


def test_locations_are_landing_relative_and_read_back(tmp_path: Path):
    landing = tmp_path / "landing"
    day = landing / "2025-01-01"
    (day / "img").mkdir(parents=True)
    (day / "img" / "a.jpg").write_bytes(b"file bytes")
    with tarfile.open(day / "s.tar", "w") as tar:
        for name, data in [("k1.jpg", b"member bytes"), ("k1.txt", b"caption")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (day / "m.jsonl").write_text('{"image": "img/a.jpg", "text": "a"}\n')
    manifest, shard = discover(day)
    file_loc = location_of(manifest.image, landing)
    tar_loc = location_of(shard.image, landing)
    assert file_loc == "2025-01-01/img/a.jpg"
    assert tar_loc.startswith("2025-01-01/s.tar#bytes=")
    # A moved home still resolves: locations are relative to wherever the landing root is now.
    moved = tmp_path / "elsewhere"
    landing.rename(moved)
    assert read_location(file_loc, moved) == b"file bytes"
    assert read_location(tar_loc, moved) == b"member bytes"
    with pytest.raises(FileNotFoundError):
        read_location("2025-01-01/img/gone.jpg", moved)

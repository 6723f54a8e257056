"""Landing input built by someone who does not wish the platform well.

Each test builds its hostile input in a temporary day folder, runs discovery (and ingest where
the row must survive decoding), and asserts the exact ledger reason of every row, that rows are
conserved, and, with the ``audit`` hook, that no file outside the day folder was opened.
"""

from __future__ import annotations

import io
import json
import os
import socket
import tarfile
import unicodedata
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dataplatform.core.ingest import text_normalize
from dataplatform.core.ingest.ingest_folder import IngestOptions, ingest_folder
from dataplatform.core.ingest.landing import (
    MAX_JSON_DEPTH,
    MAX_MANIFEST_LINE_BYTES,
    MAX_PAIR_ID_CHARS,
    discover,
    webdataset_key,
)
from dataplatform.core.ingest.text_normalize import DEFAULT_MAX_TEXT_CHARS, RAW_CAP_FACTOR
from tests.conftest import encode, photo

DATE = "2025-03-01"
SECRET = "root:x:0:0:secret-credential-line"


@pytest.fixture
def day(tmp_path: Path) -> Path:
    folder = tmp_path / "landing" / DATE
    folder.mkdir(parents=True)
    return folder


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A file outside the landing folder that stands for /etc/passwd or /proc/self/environ."""
    path = tmp_path / "outside" / "passwd"
    path.parent.mkdir()
    path.write_text(SECRET + "\n")
    return path


def _jpeg(name: str = "coffee", size: tuple[int, int] = (48, 40)) -> bytes:
    return encode(photo(name).resize(size))


def _errors(records) -> dict[tuple[str, int], str]:
    return {(r.source, r.row): r.error[0] for r in records if r.error}


def _ingest(day: Path):
    result = ingest_folder(day, DATE, IngestOptions(workers=1))
    assert result.rows_in == result.kept.num_rows + result.rejected.num_rows
    return result


def _reasons(result) -> dict[str, str]:
    return dict(
        zip(
            result.rejected.column("source").to_pylist(),
            result.rejected.column("reason").to_pylist(),
            strict=True,
        )
    )


def _tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


# --- symlinks out of the day folder -------------------------------------------------------


def test_symlinked_sidecar_manifest_shard_and_image_are_refused_unopened(
    day: Path, secret: Path, audit
):
    (day / "cup.jpg").write_bytes(_jpeg())
    os.symlink(secret, day / "cup.txt")  # a sidecar caption that is /etc/passwd
    os.symlink(secret, day / "pairs.jsonl")  # a manifest
    os.symlink(secret, day / "shard-0.tar")  # a shard
    os.symlink(secret, day / "pic.jpg")  # an image, referenced by a real manifest
    (day / "real.jsonl").write_text(json.dumps({"id": "r1", "image": "pic.jpg", "text": "x"}))
    os.symlink(secret.parent, day / "linked_dir")  # a folder leading out
    (day / "inner").mkdir()
    os.symlink(day / "inner", day / "loop_dir")  # a folder that stays inside
    records = discover(day)
    assert _errors(records) == {
        ("cup.jpg", 0): "path_outside_landing",
        ("linked_dir", 0): "path_outside_landing",
        ("loop_dir", 0): "symlinked_folder",
        ("pairs.jsonl", 0): "path_outside_landing",
        ("real.jsonl", 0): "path_outside_landing",
        ("shard-0.tar", 0): "path_outside_landing",
    }
    assert len(records) == 6  # pic.jpg is real.jsonl's row, not a second one
    by_source = {r.source: r for r in records}
    assert "caption file" in by_source["cup.jpg"].error[1]
    assert "symlink" in by_source["pairs.jsonl"].error[1]
    assert all(SECRET not in str(r.text) and SECRET not in r.error[1] for r in records)
    assert audit.opened_outside(day) == []
    assert str(secret) not in audit.opens


def test_symlink_that_stays_inside_is_followed(day: Path):
    (day / "data").mkdir()
    (day / "data" / "cup.jpg").write_bytes(_jpeg())
    (day / "data" / "captions.txt").write_text("a cup of coffee")
    os.symlink(day / "data" / "cup.jpg", day / "cup.jpg")
    os.symlink(day / "data" / "captions.txt", day / "cup.txt")
    result = _ingest(day)
    assert result.kept.column("text").to_pylist() == ["a cup of coffee"]
    # The targets are read through the links, so neither is also an orphan or unsupported.
    assert result.rejected.num_rows == 0


# --- FIFOs, sockets, devices ----------------------------------------------------------------


@pytest.mark.timeout(60)
def test_fifos_sockets_and_devices_are_refused_before_opening(day: Path, audit):
    os.mkfifo(day / "pairs.jsonl")  # a manifest that would block any reader forever
    (day / "cup.jpg").write_bytes(_jpeg())
    os.mkfifo(day / "cup.txt")  # a sidecar caption that blocks
    os.mkfifo(day / "pipe.jpg")
    (day / "m.csv").write_text("id,image,text\nq1,pipe.jpg,a pipe\n")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(day / "s.tar"))
    os.symlink("/dev/zero", day / "zero.parquet")  # a device that never ends (outside, too)
    try:
        result = _ingest(day)
    finally:
        sock.close()
    assert _reasons(result) == {
        "cup.jpg": "not_a_regular_file",
        "m.csv line 2": "not_a_regular_file",
        "pairs.jsonl": "not_a_regular_file",
        "s.tar": "not_a_regular_file",
        "zero.parquet": "path_outside_landing",
    }
    details = dict(
        zip(
            result.rejected.column("source").to_pylist(),
            result.rejected.column("detail").to_pylist(),
            strict=True,
        )
    )
    assert "is a FIFO" in details["pairs.jsonl"] and "is a socket" in details["s.tar"]
    fifos = {str((day / n).resolve()) for n in ("pairs.jsonl", "cup.txt", "pipe.jpg")}
    assert not fifos & set(audit.opens)


def test_device_inside_the_day_folder_is_refused(day: Path):
    try:
        os.mknod(day / "dev.jsonl", 0o600 | 0o020000, os.makedev(1, 5))  # a /dev/zero twin
    except (PermissionError, OSError) as exc:
        pytest.skip(f"cannot create a device node here: {exc}")
    (record,) = discover(day)
    assert record.error[0] == "not_a_regular_file"
    assert "character device" in record.error[1]


# --- bounded work per row -------------------------------------------------------------------


def test_huge_caption_is_capped_before_normalisation(day: Path, monkeypatch):
    (day / "cup.jpg").write_bytes(_jpeg())
    caption = "a cup " + "é" * (50 * 1024 * 1024)
    pq.write_table(pa.table({"image": ["cup.jpg"], "text": [caption]}), day / "m.parquet")
    seen: list[int] = []
    real_normalize = unicodedata.normalize

    def normalize(form: str, text: str) -> str:
        seen.append(len(text))
        return real_normalize(form, text)

    monkeypatch.setattr(text_normalize.unicodedata, "normalize", normalize)
    result = _ingest(day)
    (row,) = result.kept.to_pylist()
    assert row["text_truncated"] is True
    assert len(row["text"]) == DEFAULT_MAX_TEXT_CHARS
    assert seen and max(seen) <= DEFAULT_MAX_TEXT_CHARS * RAW_CAP_FACTOR


def test_overlong_line_deep_json_and_huge_integer_are_single_rows(day: Path):
    (day / "cup.jpg").write_bytes(_jpeg())
    good = json.dumps({"id": "ok", "image": "cup.jpg", "text": "a cup"})
    lines = [
        good,
        json.dumps({"id": "long", "image": "cup.jpg", "text": "x" * (MAX_MANIFEST_LINE_BYTES + 5)}),
        "[" * 200_000 + "]" * 200_000,
        '{"id": "deep", "image": "cup.jpg", "text": "x", "n": ' + "[" * 5000 + "]" * 5000 + "}",
        '{"id": "brackets-in-strings", "image": "cup.jpg", "text": "' + "[{" * 100 + '"}',
        '{"id": "big", "image": "cup.jpg", "text": "x", "n": ' + "9" * 5000 + "}",
        json.dumps({"id": "i" * (MAX_PAIR_ID_CHARS + 1), "image": "cup.jpg", "text": "x"}),
        json.dumps({"id": "esc\x1b[2Jape", "image": "cup.jpg", "text": "x"}),
    ]
    (day / "m.jsonl").write_text("\n".join(lines) + "\n")
    records = discover(day)
    assert _errors(records) == {
        ("m.jsonl", 1): "manifest_line_too_long",
        ("m.jsonl", 2): "manifest_json_too_deep",
        ("m.jsonl", 3): "manifest_json_too_deep",
        ("m.jsonl", 5): "malformed_manifest_line",
        ("m.jsonl", 6): "invalid_pair_id",
        ("m.jsonl", 7): "invalid_pair_id",
    }
    by_row = {r.row: r for r in records}
    assert f"over {MAX_MANIFEST_LINE_BYTES}" in by_row[1].error[1]
    assert f"deeper than {MAX_JSON_DEPTH}" in by_row[2].error[1]
    assert "unparseable JSON value" in by_row[5].error[1]
    assert by_row[4].error is None and by_row[4].manifest_id == "brackets-in-strings"
    result = _ingest(day)
    assert sorted(result.kept.column("pair_id").to_pylist()) == ["brackets-in-strings", "ok"]
    assert result.rows_in == 8


def test_bad_paths_and_csv_field_over_the_limit(day: Path):
    (day / "cup.jpg").write_bytes(_jpeg())
    rows = [
        ("nul", "cup\x00.jpg"),
        ("long", "a" * 300 + ".jpg"),
        ("deep", "/".join(["d" * 200] * 30) + ".jpg"),
        ("ok", "cup.jpg"),
    ]
    pq.write_table(
        pa.table({"id": [r[0] for r in rows], "image": [r[1] for r in rows], "text": ["t"] * 4}),
        day / "m.parquet",
    )
    (day / "c.csv").write_text(
        "\ufeffid,image,text\n" + f'big,cup.jpg,"{"y" * 200_000}"\n' + "fine,cup.jpg,a cup\n",
        encoding="utf-8",
    )
    result = _ingest(day)
    reasons = _reasons(result)
    assert reasons == {
        "c.csv line 2": "malformed_manifest_line",
        "m.parquet row 0": "invalid_path",
        "m.parquet row 1": "invalid_path",
        "m.parquet row 2": "invalid_path",
    }
    assert sorted(result.kept.column("pair_id").to_pylist()) == ["fine", "ok"]


def test_a_file_name_that_is_not_utf8_is_a_ledger_row(day: Path):
    (day / "cup.jpg").write_bytes(_jpeg())
    (day / "cup.txt").write_text("a cup")
    with open(os.path.join(os.fsencode(day), b"bad\xff.jpg"), "wb") as fh:
        fh.write(_jpeg())
    result = _ingest(day)
    assert _reasons(result) == {"bad\ufffd.jpg": "invalid_path"}
    assert result.kept.column("text").to_pylist() == ["a cup"]


def test_bom_at_the_start_of_a_jsonl_manifest_is_accepted(day: Path):
    (day / "cup.jpg").write_bytes(_jpeg())
    line = json.dumps({"id": "bom", "image": "cup.jpg", "text": "a cup"})
    (day / "m.jsonl").write_bytes(b"\xef\xbb\xbf" + line.encode() + b"\n")
    (record,) = discover(day)
    assert record.error is None and record.manifest_id == "bom"


def test_an_exception_inside_one_row_is_that_rows_ledger_entry(day: Path, monkeypatch):
    """Whatever a future parser bug raises, the folder still yields every other row."""
    from dataplatform.core.ingest import landing

    (day / "cup.jpg").write_bytes(_jpeg())
    lines = [json.dumps({"id": f"r{i}", "image": "cup.jpg", "text": "x"}) for i in range(3)]
    (day / "m.jsonl").write_text("\n".join(lines))
    real = landing._mapping_record

    def flaky(root, rel, row, obj, locator):
        if obj["id"] == "r1":
            raise KeyError("boom")
        return real(root, rel, row, obj, locator)

    monkeypatch.setattr(landing, "_mapping_record", flaky)
    records = discover(day)
    assert _errors(records) == {("m.jsonl", 1): "malformed_manifest_line"}
    assert "KeyError" in records[1].error[1]


# --- WebDataset shards ----------------------------------------------------------------------


def test_webdataset_grouping_splits_at_the_first_dot():
    assert webdataset_key("000002.left.jpg") == ("000002", "left.jpg")
    assert webdataset_key("a/b/000002.txt") == ("a/b/000002", "txt")
    assert webdataset_key("README") == ("", "")
    assert webdataset_key(".hidden") == ("", "")


def test_every_tar_member_is_accounted_for(day: Path):
    jpg = _jpeg()
    _tar(
        day / "shard.tar",
        [
            ("000001.jpg", jpg),
            ("000001.txt", b"first caption"),
            ("000001.txt", b"replacement caption"),  # a duplicated name: the later one wins
            ("000002.left.jpg", jpg),  # one sample with 000002.txt, as WebDataset groups it
            ("000002.txt", b"second caption"),
            ("000002.cls", b"7"),  # another field of the sample, kept in extra
            ("000003.jpg", jpg),
            ("000003.png", encode(photo("rocket").resize((32, 32)), "PNG")),
            ("000003.txt", b"third caption"),
            ("000004.jpg", jpg),
            ("000004.json", b'["not", "an", "object"]'),
            ("LICENSE", b"no extension"),
        ],
    )
    records = discover(day)
    assert [(r.locator, r.error[0] if r.error else None) for r in records] == [
        ("key 000001", None),
        ("key 000002", None),
        ("key 000003", None),
        ("key 000004", "malformed_manifest_line"),
        ("member 000001.txt", "duplicate_shard_member"),
        ("member LICENSE", "shard_member_without_extension"),
        ("member 000003.png", "extra_image_member"),
    ]
    first, second, third = records[:3]
    assert first.text == "replacement caption"
    assert second.text == "second caption" and second.image_uri == "shard.tar#000002.left.jpg"
    assert second.extra["shard_members"] == ["000002.cls"]
    assert third.image_uri == "shard.tar#000003.jpg"
    assert "not a JSON object" in records[3].error[1]
    result = _ingest(day)
    assert result.rows_in == 7 and result.kept.num_rows == 3


def test_truncated_shard_keeps_the_pairs_before_the_break(day: Path):
    jpg = _jpeg()
    members = []
    for i in range(1, 5):
        members += [(f"{i:06d}.jpg", jpg), (f"{i:06d}.txt", f"caption {i}".encode())]
    full = day / "full.tar"
    _tar(full, members)
    data = full.read_bytes()
    full.unlink()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        offsets = {m.name: (m.offset, m.offset_data) for m in tar.getmembers()}
    # One shard cut inside a header, one cut inside an image body.
    (day / "cut_header.tar").write_bytes(data[: offsets["000003.jpg"][0] + 100])
    (day / "cut_body.tar").write_bytes(data[: offsets["000004.jpg"][1] + 10])
    records = discover(day)
    by_source: dict[str, list] = {}
    for r in records:
        by_source.setdefault(r.source, []).append((r.locator, r.error[0] if r.error else None))
    assert by_source["cut_header.tar"] == [
        ("key 000001", None),
        ("key 000002", None),
        (f"byte {offsets['000003.jpg'][0]}", "truncated_shard"),
    ]
    assert by_source["cut_body.tar"] == [
        ("key 000001", None),
        ("key 000002", None),
        ("key 000003", None),
        ("key 000004", "truncated_shard"),
    ]
    result = _ingest(day)
    assert result.kept.num_rows == 5


def test_tar_link_members_are_rows_not_reads(day: Path, secret: Path, audit):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        jpg = _jpeg()
        info = tarfile.TarInfo("000001.jpg")
        info.size = len(jpg)
        tar.addfile(info, io.BytesIO(jpg))
        link = tarfile.TarInfo("000001.txt")
        link.type = tarfile.SYMTYPE
        link.linkname = str(secret)
        tar.addfile(link)
    (day / "links.tar").write_bytes(buf.getvalue())
    records = discover(day)
    assert [(r.locator, r.error[0] if r.error else None) for r in records] == [
        ("key 000001", None),
        ("member 000001.txt", "unsupported_shard_member"),
    ]
    assert records[0].text is None
    assert audit.opened_outside(day) == []


def test_an_image_that_kills_its_decoder_process_is_one_row(tmp_path: Path, day: Path):
    """A C-level crash in a worker (here: ``os._exit`` on one image's bytes) costs one row."""
    import subprocess
    import sys
    import textwrap

    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(
        textwrap.dedent(
            """
            import os
            import dataplatform.core.ingest.image_decode as decode

            _real = decode.inspect_image_bytes

            def inspect_image_bytes(data, **kwargs):
                if b"CRASH-THIS-DECODER" in data:
                    os._exit(139)
                return _real(data, **kwargs)

            decode.inspect_image_bytes = inspect_image_bytes
            """
        )
    )
    n = 70  # above MIN_IMAGES_FOR_POOL, so the pool is used
    lines = []
    for i in range(n):
        data = _jpeg(size=(32 + i % 7, 32))
        if i == 37:
            data += b"CRASH-THIS-DECODER"
        (day / f"{i:03d}.jpg").write_bytes(data)
        lines.append(json.dumps({"id": f"i{i:03d}", "image": f"{i:03d}.jpg", "text": "a cup"}))
    (day / "m.jsonl").write_text("\n".join(lines))
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from dataplatform.core.ingest.ingest_folder import IngestOptions, ingest_folder
        r = ingest_folder(Path({str(day)!r}), {DATE!r}, IngestOptions(workers=2))
        print(r.rows_in, r.kept.num_rows, r.rejected.column("pair_id").to_pylist(),
              r.rejected.column("reason").to_pylist())
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hooks), os.getcwd()])}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=240
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[0] == "70 69 ['i037'] ['decoder_crashed']"


# --- remote images through ingest, and locations read back by later stages -----------------


@pytest.fixture
def image_server():
    """Two loopback HTTP servers: 127.0.0.1 serves a photo and redirects; 127.0.0.2 serves one."""
    import http.server
    import threading

    photo_bytes = _jpeg("rocket")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            if self.path.startswith("/redirect"):
                self.send_response(302)
                self.send_header("Location", f"http://127.0.0.2:{servers[1].server_port}/p.jpg")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(photo_bytes)))
            self.end_headers()
            self.wfile.write(photo_bytes)

        def log_message(self, *args):
            pass

    servers = [
        http.server.ThreadingHTTPServer((host, 0), Handler) for host in ("127.0.0.1", "127.0.0.2")
    ]
    for server in servers:
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield servers[0].server_port
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def _download_and_ingest(day: Path):
    """The download step, then ingest, as ``url_downloads`` and ``raw_pairs`` run a day."""
    from dataplatform.core.ingest.url_download import download_day

    download_day(day, discover(day))
    return _ingest(day)


def _remote_manifest(day: Path, port: int) -> None:
    rows = [
        ("direct", f"http://127.0.0.1:{port}/p.jpg"),
        ("decimal", f"http://2130706433:{port}/p.jpg"),
        ("redirected", f"http://127.0.0.1:{port}/redirect"),
        ("metadata", "http://169.254.169.254/latest/meta-data/iam"),
    ]
    (day / "m.jsonl").write_text(
        "\n".join(json.dumps({"id": i, "image": u, "text": "a rocket"}) for i, u in rows)
    )


def test_internal_urls_are_ledger_rows_and_never_connected(
    day: Path, image_server, audit, monkeypatch
):
    monkeypatch.delenv("DATAPLATFORM_ALLOW_NETWORKS", raising=False)
    _remote_manifest(day, image_server)
    result = _download_and_ingest(day)
    assert result.kept.num_rows == 0
    assert dict(
        zip(
            result.rejected.column("pair_id").to_pylist(),
            result.rejected.column("reason").to_pylist(),
            strict=True,
        )
    ) == {
        "decimal": "fetch_blocked_address",
        "direct": "fetch_blocked_address",
        "metadata": "fetch_blocked_address",
        "redirected": "fetch_blocked_address",
    }
    assert audit.connects == []


def test_allowed_network_is_fetched_and_each_redirect_hop_checked(
    day: Path, image_server, audit, monkeypatch
):
    monkeypatch.setenv("DATAPLATFORM_ALLOW_NETWORKS", "127.0.0.1/32")
    _remote_manifest(day, image_server)
    result = _download_and_ingest(day)
    assert sorted(result.kept.column("pair_id").to_pylist()) == ["decimal", "direct"]
    reasons = dict(
        zip(
            result.rejected.column("pair_id").to_pylist(),
            result.rejected.column("detail").to_pylist(),
            strict=True,
        )
    )
    assert set(reasons) == {"metadata", "redirected"}
    assert "redirect 1" in reasons["redirected"] and "127.0.0.2" in reasons["redirected"]
    hosts = {address[0] for address in audit.connects}
    assert hosts == {"127.0.0.1"}


def test_malformed_allow_list_fails_the_day_with_the_setting_named(day: Path, monkeypatch):
    monkeypatch.setenv("DATAPLATFORM_ALLOW_NETWORKS", "127.0.0.0/8,not-a-network")
    with pytest.raises(ValueError, match="DATAPLATFORM_ALLOW_NETWORKS"):
        ingest_folder(day, DATE)


def test_later_stages_read_only_inside_the_landing_root(tmp_path: Path, secret: Path, audit):
    from dataplatform.core.ingest.image_store import read_location

    landing = tmp_path / "landing"
    (landing / DATE).mkdir(parents=True, exist_ok=True)
    os.symlink(secret, landing / DATE / "swapped.jpg")
    os.mkfifo(landing / DATE / "fifo.jpg")
    for location in ("../outside/passwd", f"{DATE}/swapped.jpg", f"{DATE}/swapped.jpg#bytes=0+10"):
        with pytest.raises(OSError, match="path_outside_landing"):
            read_location(location, landing)
    with pytest.raises(OSError, match="not_a_regular_file"):
        read_location(f"{DATE}/fifo.jpg", landing)
    assert str(secret) not in audit.opens


# --- what a review attack found: strings, CSV quotes, tar headers, races, sizes ---------------


def test_lone_surrogates_anywhere_are_rows_not_a_failed_write(day: Path):
    (day / "a.jpg").write_bytes(_jpeg())
    lines = [
        '{"id": "\\ud800", "image": "a.jpg", "text": "hi"}',
        '{"id": "u", "image": "a.jpg", "text": "hi", "url": "http://x/\\ud800", '
        '"k\\udcff": "\\ud800"}',
        '{"id": "t", "image": "\\udcff.jpg", "text": "\\ud800"}',
    ]
    (day / "m.jsonl").write_text("\n".join(lines))
    jpg = _jpeg()
    (day / "s.tar").write_bytes(
        _raw_member(b"000001.jpg", jpg)
        + _raw_member(b"000001.json", b'{"id": "\\udcff"}')
        + _raw_member(b"\xff.jpg", jpg)  # a member name that is not UTF-8
        + b"\0" * 1024
    )
    os.symlink(day / "a.jpg", os.path.join(os.fsencode(day), b"link\xff"))
    result = _ingest(day)
    reasons = dict(
        zip(
            result.rejected.column("source").to_pylist(),
            result.rejected.column("reason").to_pylist(),
            strict=True,
        )
    )
    assert reasons == {
        "link\ufffd": "invalid_path",
        "m.jsonl line 1": "invalid_pair_id",
        "m.jsonl line 3": "invalid_path",
        "s.tar key 000001": "invalid_pair_id",
        "s.tar member \ufffd.jpg": "invalid_path",
    }
    (kept,) = result.kept.to_pylist()
    assert kept["pair_id"] == "u" and kept["url"] == "http://x/\ufffd"
    assert json.loads(kept["extra"]) == {"k\ufffd": "\ufffd"}


def test_a_quote_inside_an_unquoted_csv_field_is_a_literal(day: Path):
    (day / "a.jpg").write_bytes(_jpeg())
    rows = ['1,a.jpg,5" screen'] + [f"{i},a.jpg,row{i}" for i in range(2, 40)]
    rows += ['40,a.jpg,7" tv', '41,a.jpg,"quoted, with comma"', '42,a.jpg,"two\nlines"']
    (day / "m.csv").write_text("id,image,text\n" + "\n".join(rows) + "\n")
    result = _ingest(day)
    assert result.rows_in == 42 and result.rejected.num_rows == 0
    texts = dict(
        zip(
            result.kept.column("pair_id").to_pylist(),
            result.kept.column("text").to_pylist(),
            strict=True,
        )
    )
    assert texts["1"] == '5" screen' and texts["40"] == '7" tv'
    assert texts["41"] == "quoted, with comma" and texts["42"] == "two lines"


def test_csv_with_carriage_return_line_endings(day: Path):
    (day / "a.jpg").write_bytes(_jpeg())
    (day / "m.csv").write_bytes(b"id,image,text\r1,a.jpg,one\r2,a.jpg,two\r")
    result = _ingest(day)
    assert sorted(result.kept.column("pair_id").to_pylist()) == ["1", "2"]


def test_odd_value_types_get_a_reason_not_their_python_repr(day: Path):
    (day / "a.jpg").write_bytes(_jpeg())
    lines = [
        '{"id": "list-text", "image": "a.jpg", "text": ["a", "b"]}',
        '{"id": "dict-image", "image": {"p": "a.jpg"}, "text": "x"}',
        '{"id": true, "image": "a.jpg", "text": "x"}',
        '{"id": NaN, "image": "a.jpg", "text": "nan id gets a derived one"}',
        '{"id": 7.0, "image": "a.jpg", "text": "float id"}',
        '{"id": "num-text", "image": "a.jpg", "text": 42}',
    ]
    (day / "m.jsonl").write_text("\n".join(lines))
    records = discover(day)
    assert _errors(records) == {
        ("m.jsonl", 0): "malformed_manifest_line",
        ("m.jsonl", 1): "malformed_manifest_line",
        ("m.jsonl", 2): "invalid_pair_id",
    }
    assert "`text` is a list" in records[0].error[1]
    assert "`image` is a dict" in records[1].error[1]
    assert [r.manifest_id for r in records[3:]] == [None, "7", "num-text"]
    assert records[5].text == "42"


def _raw_member(name: bytes, data: bytes) -> bytes:
    """One GNU tar member with a name given as raw bytes (tarfile will not write bad UTF-8)."""
    header = bytearray(_gnu_header("x", size=len(data)))
    header[0:100] = name.ljust(100, b"\0")
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header) + data + b"\0" * (-len(data) % 512)


def _gnu_header(
    name: str, size_field: bytes | None = None, size: int = 0, typ: bytes = b"0"
) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    buf = bytearray(info.tobuf(format=tarfile.GNU_FORMAT))
    if size_field is not None:
        buf[124:136] = size_field
    buf[156:157] = typ
    buf[148:156] = b" " * 8
    buf[148:156] = b"%06o\0 " % sum(buf[:512])
    return bytes(buf)


@pytest.mark.timeout(30)
def test_hostile_tar_headers_cost_bounded_work(day: Path):
    jpg = _jpeg()
    good = _gnu_header("000001.jpg", size=len(jpg)) + jpg + b"\0" * (-len(jpg) % 512)
    negative = _gnu_header("000002.jpg", size_field=b"\xff" + (256**11 - 512).to_bytes(11, "big"))
    (day / "negative.tar").write_bytes(good + negative + b"\0" * 1024)  # CVE-2025-8194 shape
    digits = b"1" * 60_000
    pax = _gnu_header("pax", size=len(digits), typ=b"x") + digits + b"\0" * (-len(digits) % 512)
    (day / "pax_digits.tar").write_bytes(good + pax + b"\0" * 1024)  # CVE-2024-6232 shape
    with open(day / "long_name.tar", "wb") as fh:  # a 2 GB long name, sparse on disk
        fh.write(good + _gnu_header("././@LongLink", size=2_000_000_000, typ=b"L"))
        fh.truncate(len(good) + 512 + 2_000_000_000 + 1024)
    records = discover(day)
    rows = [(r.source, r.locator, r.error[0] if r.error else None) for r in records]
    assert rows == [
        ("long_name.tar", "key 000001", None),
        ("long_name.tar", f"byte {len(good)}", "truncated_shard"),
        ("negative.tar", "key 000001", None),
        ("negative.tar", f"byte {len(good)}", "truncated_shard"),
        ("pax_digits.tar", "key 000001", None),
        ("pax_digits.tar", f"byte {len(good)}", "truncated_shard"),
    ]
    assert "negative size" in records[3].error[1]
    assert "over 65536" in records[1].error[1] and "PAX header" in records[5].error[1]


def test_gnu_sparse_member_is_refused_not_misread(day: Path, tmp_path: Path):
    import shutil
    import subprocess

    if shutil.which("tar") is None:
        pytest.skip("GNU tar is not installed")
    src = tmp_path / "src"
    src.mkdir()
    jpg = _jpeg()
    with open(src / "000001.jpg", "wb") as fh:
        fh.write(jpg)
        fh.seek(1 << 20)
        fh.write(jpg)
    (src / "000001.txt").write_text("sparse")
    (src / "000002.jpg").write_bytes(jpg)
    (src / "000002.txt").write_text("plain")
    subprocess.run(
        ["tar", "--sparse", "--format=gnu", "-cf", str(day / "s.tar"), "-C", str(src), "."],
        check=True,
    )
    records = discover(day)
    rows = {(r.locator, r.error[0] if r.error else None) for r in records}
    assert ("member ./000001.jpg", "unsupported_shard_member") in rows
    assert ("key ./000002", None) in rows
    assert ("key ./000001", "missing_image") in rows


def test_an_image_swapped_for_a_symlink_after_discovery_is_not_read(
    day: Path, secret: Path, audit, monkeypatch
):
    from dataplatform.core.ingest import ingest_folder as ingest

    (day / "a.jpg").write_bytes(_jpeg())
    (day / "a.txt").write_text("a cup")
    real_discover = ingest.discover

    def discover_then_swap(*args, **kwargs):
        records = real_discover(*args, **kwargs)
        (day / "a.jpg").unlink()
        os.symlink(secret, day / "a.jpg")
        return records

    monkeypatch.setattr(ingest, "discover", discover_then_swap)
    result = _ingest(day)
    assert _reasons(result) == {"a.jpg": "path_outside_landing"}
    assert SECRET[:8] not in result.rejected.column("detail")[0].as_py()
    assert str(secret) not in audit.opens, [p for p in audit.opens if "site-packages" not in p]


def test_a_tiny_parquet_that_expands_to_gigabytes_is_cut_per_cell(day: Path):
    (day / "a.jpg").write_bytes(_jpeg())
    big = "y" * 200_000
    table = pa.table(
        {"image": ["a.jpg"] * 2000, "text": pa.array([big] * 2000).dictionary_encode()}
    )
    pq.write_table(table, day / "m.parquet", compression="zstd")
    assert (day / "m.parquet").stat().st_size < 100_000
    records = discover(day)
    cap = DEFAULT_MAX_TEXT_CHARS * RAW_CAP_FACTOR
    assert len(records) == 2000
    assert all(len(r.text) == cap and r.text_cut for r in records)


def test_local_images_over_the_cap_are_not_read_whole(day: Path, monkeypatch):
    from dataplatform.core.ingest import image_store, landing

    monkeypatch.setattr(image_store, "MAX_IMAGE_BYTES", 10_000)
    monkeypatch.setattr(landing, "MAX_IMAGE_BYTES", 10_000)
    with open(day / "a.jpg", "wb") as fh:
        fh.write(_jpeg())
        fh.truncate(3_000_000_000)  # sparse: a 3 GB "JPEG" that costs no disk
    (day / "a.txt").write_text("huge")
    _tar(day / "s.tar", [("000001.jpg", _jpeg() + b"\0" * 20_000), ("000001.txt", b"big member")])
    result = _ingest(day)
    assert _reasons(result) == {"a.jpg": "image_too_large", "s.tar key 000001": "image_too_large"}


def test_folders_nested_deeper_than_the_cap_are_one_row(day: Path):
    from dataplatform.core.ingest.landing import MAX_FOLDER_DEPTH

    deep = day
    for _ in range(MAX_FOLDER_DEPTH + 5):
        deep = deep / "a"
    deep.mkdir(parents=True)
    (deep / "x.jpg").write_bytes(_jpeg())
    records = discover(day)
    assert [r.error[0] for r in records] == ["invalid_path"]
    assert f"deeper than {MAX_FOLDER_DEPTH}" in records[0].error[1]

"""Review sheets on a small warehouse written directly: every count and pairing is known."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from PIL import Image, ImageOps

from dataplatform.core.records.review_rows import ReviewLimits, review_dates_showing
from dataplatform.core.records.review_sheet import (
    render_partition_review,
    render_review_index,
    render_review_sheet,
    review_path,
)
from dataplatform.core.records.thumbnails import ThumbnailError, jpeg_data_uri, thumbnail_jpeg
from dataplatform.core.store.home import Home
from dataplatform.core.store.schema import RAW_PAIR_SCHEMA, ledger_table
from dataplatform.core.store.warehouse import read_partition, write_ledger, write_partition
from tests.conftest import encode, photo

DAY1, DAY2 = "2025-01-01", "2025-01-02"
INJECTION = "<script>alert(1)</script> & <img src=x onerror=alert(2)>"
LOW_CLIP = [f"low-{i:02d}" for i in range(70)]


# --- a warehouse with known content ---------------------------------------------------------


def _raw(pair_id: str, date: str, image: str, text: str, size: tuple[int, int]) -> dict:
    return {
        "pair_id": pair_id,
        "date": date,
        "text": text,
        "image_location": f"{date}/img/{image}",
        "image_uri": f"img/{image}",
        "width": size[0],
        "height": size[1],
        "source": "pairs.jsonl",
    }


def build_review_warehouse(home: Home) -> None:
    """Two days through raw_pairs, phash_deduped and clip_scored, with a takedown.

    Day 2 holds: copies of three day-1 originals (one of them, t1, taken down), a pair whose
    caption is an HTML injection, a pair whose image file disappeared after ingest, 70 pairs
    under the CLIP cut (more than one sheet shows), and two rows raw_pairs rejected.
    """
    files = {
        DAY1: {
            "astronaut.jpg": encode(photo("astronaut"), quality=90),
            "coffee.jpg": encode(photo("coffee"), quality=90),
            "chelsea.jpg": encode(photo("chelsea"), quality=90),
        },
        DAY2: {
            "astronaut_small.jpg": encode(photo("astronaut").resize((256, 256)), quality=85),
            "coffee_q40.jpg": encode(photo("coffee"), quality=40),
            "chelsea_copy.jpg": encode(photo("chelsea"), quality=70),
            "camera.png": encode(photo("camera"), fmt="PNG"),
            "rocket.jpg": encode(photo("rocket"), quality=90),
        },
    }
    for date, images in files.items():
        (home.landing / date / "img").mkdir(parents=True)
        for name, data in images.items():
            (home.landing / date / "img" / name).write_bytes(data)

    day1 = [
        _raw("a1", DAY1, "astronaut.jpg", "an astronaut", (512, 512)),
        _raw("b1", DAY1, "coffee.jpg", "a cup of coffee", (600, 400)),
        _raw("t1", DAY1, "chelsea.jpg", "SECRET-CAPTION-T1", (451, 300)),
    ]
    day2 = [
        _raw("a2", DAY2, "astronaut_small.jpg", "astronaut, smaller", (256, 256)),
        _raw("b2", DAY2, "coffee_q40.jpg", "coffee, recompressed", (600, 400)),
        _raw("t2", DAY2, "chelsea_copy.jpg", "a cat", (451, 300)),
        _raw("inj", DAY2, "camera.png", INJECTION, (512, 512)),
        _raw("gone", DAY2, "vanished.jpg", "its file was deleted after ingest", (10, 10)),
        *[_raw(p, DAY2, "rocket.jpg", f"rocket {p}", (640, 427)) for p in LOW_CLIP],
    ]
    for date, rows in ((DAY1, day1), (DAY2, day2)):
        write_partition(home, "raw_pairs", date, pa.Table.from_pylist(rows, RAW_PAIR_SCHEMA))
    write_ledger(home, "raw_pairs", DAY1, ledger_table([]))
    write_ledger(
        home,
        "raw_pairs",
        DAY2,
        ledger_table(
            [
                _ledger("x1", DAY2, "raw_pairs", "missing_file", text="<b>bold</b> caption"),
                _ledger("td0", DAY2, "raw_pairs", "takedown", text="SECRET-CAPTION-TD0"),
            ]
        ),
    )

    write_partition(home, "phash_deduped", DAY1, pa.Table.from_pylist(day1, RAW_PAIR_SCHEMA))
    write_ledger(home, "phash_deduped", DAY1, ledger_table([]))
    kept2 = [r for r in day2 if r["pair_id"] not in ("a2", "b2", "t2")]
    write_partition(home, "phash_deduped", DAY2, pa.Table.from_pylist(kept2, RAW_PAIR_SCHEMA))
    write_ledger(
        home,
        "phash_deduped",
        DAY2,
        ledger_table(
            [
                _ledger("a2", DAY2, "phash_deduped", "phash_duplicate", "a1", distance=2.0),
                _ledger("b2", DAY2, "phash_deduped", "phash_duplicate", "b1", distance=6.0),
                _ledger("t2", DAY2, "phash_deduped", "phash_duplicate", "t1", distance=0.0),
            ]
        ),
    )
    write_ledger(
        home, "takedown", DAY1, ledger_table([_ledger("t1", DAY1, "takedown", "takedown")])
    )

    clip_kept = [{**r, "clip_score": 0.31} for r in day2 if r["pair_id"] == "inj"]
    clip_schema = RAW_PAIR_SCHEMA.append(pa.field("clip_score", pa.float32()))
    write_partition(home, "clip_scored", DAY2, pa.Table.from_pylist(clip_kept, clip_schema))
    low = [
        {
            **_ledger(p, DAY2, "clip_scored", "low_clip_score", text=f"rocket {p}"),
            "score": -0.1 + i * 0.001,
            "threshold": 0.0,
        }
        for i, p in enumerate(LOW_CLIP)
    ]
    unreadable = _ledger("gone", DAY2, "clip_scored", "image_unreadable")
    write_ledger(home, "clip_scored", DAY2, ledger_table([*low, unreadable]))


def _ledger(
    pair_id: str,
    date: str,
    stage: str,
    reason: str,
    duplicate_of: str | None = None,
    distance: float | None = None,
    text: str | None = None,
) -> dict:
    return {
        "pair_id": pair_id,
        "date": date,
        "stage": stage,
        "reason": reason,
        "detail": f"{reason} for {pair_id}",
        "duplicate_of": duplicate_of,
        "distance": distance,
        "threshold": 8.0 if distance is not None else None,
        "text": text,
    }


@pytest.fixture
def home(tmp_path: Path) -> Home:
    home = Home(tmp_path / "home")
    build_review_warehouse(home)
    return home


# --- reading the page back --------------------------------------------------------------------

VOID = {"img", "meta", "link", "br", "hr", "input"}


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    ancestors: list[Element] = field(default_factory=list)
    text: str = ""

    def within(self, **wanted: str) -> Element | None:
        """The nearest ancestor with all of ``wanted`` (attribute names with _ for -)."""
        for a in reversed(self.ancestors):
            if all(a.attrs.get(k.replace("_", "-")) == v for k, v in wanted.items()):
                return a
        return None

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())


class Page(HTMLParser):
    def __init__(self, source: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[Element] = []
        self._open: list[Element] = []
        self.feed(source)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {k: v or "" for k, v in attrs}, list(self._open))
        self.elements.append(element)
        if tag not in VOID:
            self._open.append(element)

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            if self._open.pop().tag == tag:
                break

    def handle_data(self, data: str) -> None:
        for element in self._open:
            element.text += data

    def find(self, tag: str, section: str | None = None, cls: str | None = None) -> list[Element]:
        return [
            e
            for e in self.elements
            if e.tag == tag
            and (section is None or e.within(id=section))
            and (cls is None or cls in e.classes)
        ]

    def cards(self, section: str) -> list[Element]:
        return [e for e in self.find("figure", section) if "card" in e.classes]


def page(path: Path) -> Page:
    return Page(path.read_text(encoding="utf-8"))


def card_ids(cards: list[Element]) -> list[str]:
    return [c.attrs["data-pair-id"] for c in cards]


def imgs_in(p: Page, card: Element) -> list[Element]:
    return [e for e in p.find("img") if card in e.ancestors]


# --- the sheets -------------------------------------------------------------------------------


def test_duplicate_clusters_pair_each_copy_with_its_kept_original_from_an_earlier_day(home):
    path = render_review_sheet(home, "phash_deduped", DAY2)
    assert path == home.warehouse / "review" / f"date={DAY2}" / "phash_deduped.html"
    p = page(path)

    clusters = p.find("div", "clusters", cls="cluster")
    # Least certain first: 6 bits, then 2, then 0.
    assert [c.attrs["data-original"] for c in clusters] == ["b1", "a1", "t1"]
    pairs = {
        (card.attrs["data-pair-id"], card.attrs["data-duplicate-of"])
        for card in p.find("figure", "clusters", cls="copy")
    }
    assert pairs == {("a2", "a1"), ("b2", "b1"), ("t2", "t1")}  # the ledger's duplicate_of
    for cluster in clusters:
        copies = [e for e in p.find("figure", cls="copy") if cluster in e.ancestors]
        assert {c.attrs["data-duplicate-of"] for c in copies} == {cluster.attrs["data-original"]}

    originals = {c.attrs["data-pair-id"]: c for c in p.find("figure", "clusters", cls="original")}
    assert "kept 2025-01-01" in originals["a1"].text
    assert "600×400" in originals["b1"].text
    copies = {c.attrs["data-pair-id"]: c for c in p.find("figure", "clusters", cls="copy")}
    assert "Hammingbits6threshold8" in copies["b2"].text.replace(" ", "")
    # Two visible originals and three copies: five thumbnails; t1 was taken down.
    assert len(p.find("img", "clusters")) == 5
    assert [c.attrs["data-pair-id"] for c in p.find("figure", cls="taken-down")] == ["t1"]

    summary = {
        e.attrs["data-count"]: int(e.text)
        for e in p.find("td", "summary")
        if e.attrs.get("data-count")
    }
    assert summary == {"in": 75, "kept": 72, "removed": 3}
    assert p.cards("removed") == []


def test_taken_down_pairs_show_only_their_pair_id(home):
    html = render_review_sheet(home, "phash_deduped", DAY2).read_text()
    assert "SECRET-CAPTION-T1" not in html
    chelsea = jpeg_data_uri(
        thumbnail_jpeg((home.landing / DAY1 / "img" / "chelsea.jpg").read_bytes())
    )
    assert chelsea not in html
    p = Page(html)
    (card,) = p.find("figure", cls="taken-down")
    assert card.text == "taken down" + "t1"
    assert imgs_in(p, card) == []

    # A takedown filed later: re-rendering hides a pair that was on the sheet.
    camera = jpeg_data_uri(
        thumbnail_jpeg((home.landing / DAY2 / "img" / "camera.png").read_bytes())
    )
    assert camera in html
    write_ledger(
        home, "takedown", DAY2, ledger_table([_ledger("inj", DAY2, "takedown", "takedown")])
    )
    assert review_dates_showing(home, ["inj"]) == [DAY2]
    html = render_review_sheet(home, "phash_deduped", DAY2).read_text()
    assert camera not in html
    assert "onerror" not in html
    p = Page(html)
    assert card_ids(p.find("figure", "kept", cls="taken-down")) == ["inj"]
    assert card_ids(p.find("figure", "taken-down")) == ["inj"]
    # Then the takedown rewrites the tables without the pair: the sheet still says it went.
    kept = read_partition(home, "phash_deduped", DAY2)
    write_partition(home, "phash_deduped", DAY2, kept.filter(pc.not_equal(kept["pair_id"], "inj")))
    html = render_review_sheet(home, "phash_deduped", DAY2).read_text()
    assert "alert(" not in html
    p = Page(html)
    assert "inj" not in card_ids(p.cards("kept"))
    assert card_ids(p.find("figure", "taken-down")) == ["inj"]
    (heading,) = [h for h in p.find("h3") if h.within(id="taken-down")]
    assert heading.text == "taken down after curation · 1 row"

    # Rows raw_pairs refused because of a takedown: the id, never the caption.
    html = render_review_sheet(home, "raw_pairs", DAY2).read_text()
    assert "SECRET-CAPTION-TD0" not in html
    (row,) = [r for r in Page(html).find("tr", "removed") if "taken-down" in r.classes]
    assert row.attrs["data-pair-id"] == "td0"


def test_dates_showing_a_pair_include_the_days_of_its_copies(home):
    assert review_dates_showing(home, ["t1"]) == [DAY1, DAY2]
    assert review_dates_showing(home, ["low-03"]) == [DAY2]
    assert review_dates_showing(home, ["nobody"]) == []


def test_captions_and_details_are_escaped(home):
    html = render_review_sheet(home, "phash_deduped", DAY2).read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;img src=x onerror=alert(2)&gt;" in html
    assert "<script" not in html
    p = Page(html)
    assert p.find("script") == []
    (card,) = [c for c in p.cards("kept") if c.attrs["data-pair-id"] == "inj"]
    assert INJECTION in card.text
    assert len(imgs_in(p, card)) == 1
    # Every image is an embedded JPEG: nothing to fetch, the file opens from disk.
    assert {i.attrs["src"][:23] for i in p.find("img")} == {"data:image/jpeg;base64,"}
    assert p.find("link")[0].attrs == {"rel": "icon", "href": "data:,"}

    raw = render_review_sheet(home, "raw_pairs", DAY2).read_text()
    assert "&lt;b&gt;bold&lt;/b&gt; caption" in raw
    assert "<b>" not in raw


def test_removed_rows_are_grouped_by_reason_with_scores_and_capped(home):
    p = page(render_review_sheet(home, "clip_scored", DAY2))

    low = [c for c in p.cards("removed") if c.attrs["data-reason"] == "low_clip_score"]
    assert len(low) == 60
    # Spread evenly over the score range, both ends included, lowest score first.
    assert card_ids(low)[0] == "low-00" and card_ids(low)[-1] == "low-69"
    assert len(set(card_ids(low))) == 60
    (cap,) = [e for e in p.find("p", "removed", cls="cap")]
    assert cap.attrs["data-not-shown"] == "10"
    assert "Showing 60 of 70" in cap.text
    assert "score-0.1threshold0" in low[0].text.replace(" ", "")
    assert all(len(imgs_in(p, c)) == 1 for c in low)

    (gone,) = [c for c in p.cards("removed") if c.attrs["data-reason"] == "image_unreadable"]
    assert imgs_in(p, gone) == []
    (placeholder,) = [e for e in p.find("div", cls="placeholder") if gone in e.ancestors]
    assert placeholder.text == "cannot read the image: missing_file"

    reasons = {
        r.attrs["data-reason"]: r.text
        for r in p.find("tr", "summary")
        if r.attrs.get("data-reason")
    }
    assert list(reasons) == ["low_clip_score", "image_unreadable"]
    assert reasons["low_clip_score"] == "low_clip_score700-0.1 … -0.031"
    (kept,) = p.cards("kept")
    assert "clip_score0.31" in kept.text.replace(" ", "")
    assert p.find("div", "clusters", cls="cluster") == []


def test_raw_pairs_rejects_are_listed_without_images(home):
    p = page(render_review_sheet(home, "raw_pairs", DAY2))
    assert p.find("img", "removed") == []
    rows = p.find("tr", "removed", cls="removed")
    assert sorted(r.attrs["data-pair-id"] for r in rows) == ["td0", "x1"]
    (x1,) = [r for r in rows if r.attrs["data-pair-id"] == "x1"]
    assert "missing_file for x1" in x1.text
    # 75 kept rows, all shown; one image file is gone: a placeholder, never a broken <img>.
    assert len(p.cards("kept")) == 75
    assert len(p.find("img", "kept")) == 74
    (gone,) = [c for c in p.cards("kept") if c.attrs["data-pair-id"] == "gone"]
    assert "cannot read the image" in gone.text


def test_a_huge_partition_shows_a_fixed_sample_and_says_how_many_are_not_shown(home):
    limits = ReviewLimits(kept=10, per_reason=5, clusters=2)
    first = render_review_sheet(home, "phash_deduped", DAY2, limits).read_text()
    p = Page(first)
    ids = sorted(r["pair_id"] for r in _kept_rows())
    expected = sorted(sorted(ids, key=lambda i: hashlib.md5(i.encode()).hexdigest())[:10])
    assert card_ids(p.cards("kept")) == expected
    caps = {
        e.within(id="kept") is not None: e.attrs["data-not-shown"] for e in p.find("p", cls="cap")
    }
    assert caps[True] == "62"
    (clusters_cap,) = p.find("p", "clusters", cls="cap")
    assert clusters_cap.attrs["data-not-shown"] == "1"
    assert [c.attrs["data-original"] for c in p.find("div", "clusters", cls="cluster")] == [
        "b1",
        "t1",
    ]
    # Deterministic: the same sheet again.
    again = Page(render_review_sheet(home, "phash_deduped", DAY2, limits).read_text())
    assert card_ids(again.cards("kept")) == expected

    q = page(render_review_sheet(home, "clip_scored", DAY2, limits))
    low = [c for c in q.cards("removed") if c.attrs["data-reason"] == "low_clip_score"]
    assert card_ids(low) == ["low-00", "low-17", "low-34", "low-52", "low-69"]


def _kept_rows() -> list[dict]:
    return [{"pair_id": p} for p in ["inj", "gone", *LOW_CLIP]]


def test_the_index_links_each_stage_with_its_counts(home):
    stages = ["raw_pairs", "phash_deduped", "clip_scored", "tokens"]
    paths = render_partition_review(home, DAY2, stages)
    assert paths == [review_path(home, DAY2, n) for n in [*stages[:3], "index"]]
    p = page(paths[-1])
    rows = {r.attrs["data-stage"]: r for r in p.find("tr") if r.attrs.get("data-stage")}
    assert list(rows) == stages
    cells = {s: [td.text for td in p.find("td") if rows[s] in td.ancestors] for s in stages[:3]}
    assert cells["raw_pairs"][1:4] == ["77", "75", "2"]
    assert cells["phash_deduped"][1:4] == ["75", "72", "3"]
    assert cells["clip_scored"][1:4] == ["72", "1", "71"]
    assert cells["clip_scored"][5] == "low_clip_score 70, image_unreadable 1"
    links = [a.attrs["href"] for a in p.find("a")]
    assert links == ["raw_pairs.html", "phash_deduped.html", "clip_scored.html"]
    assert "not materialized" in rows["tokens"].text
    assert all((paths[-1].parent / link).is_file() for link in links)

    # One stage on its own refreshes nothing else; the sheet links back to the index.
    sheet = page(render_review_sheet(home, "clip_scored", DAY2))
    assert sheet.find("a")[0].attrs["href"] == "index.html"
    assert render_review_index(home, DAY2, stages) == paths[-1]


def test_a_stage_without_a_partition_or_with_a_bad_name_is_refused(home):
    with pytest.raises(FileNotFoundError, match="materialize tokens for 2025-01-02"):
        render_review_sheet(home, "tokens", DAY2)
    with pytest.raises(ValueError, match="not a table name"):
        render_review_sheet(home, "../raw_pairs", DAY2)
    with pytest.raises(ValueError, match="not YYYY-MM-DD"):
        render_review_sheet(home, "raw_pairs", "2025-1-2")


# --- thumbnails ---------------------------------------------------------------------------------


def _decoded(jpeg: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(jpeg))
    assert image.format == "JPEG"
    return image.convert("RGB")


def test_thumbnails_are_small_upright_jpegs_of_any_valid_input():
    astronaut = photo("astronaut")  # 512 x 512
    wide = astronaut.resize((1200, 400))
    assert _decoded(thumbnail_jpeg(encode(wide, quality=90))).size == (160, 53)
    assert _decoded(thumbnail_jpeg(encode(wide, quality=90), size=96)).size == (96, 32)

    # EXIF orientation 6 (rotate 90 degrees clockwise to view): the thumbnail is upright.
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = encode(wide.transpose(Image.Transpose.ROTATE_90), quality=90, exif=exif.tobytes())
    assert _decoded(thumbnail_jpeg(rotated)).size == (160, 53)

    cmyk = _decoded(thumbnail_jpeg(encode(astronaut.convert("CMYK"), quality=90)))
    assert cmyk.size == (160, 160)
    assert abs(cmyk.getpixel((80, 80))[0] - astronaut.resize((160, 160)).getpixel((80, 80))[0]) < 40

    # 16-bit samples are scaled, not clipped to white.
    ramp = Image.fromarray(np.arange(256 * 256, dtype=np.uint16).reshape(256, 256))
    assert ramp.mode == "I;16"
    grey = _decoded(thumbnail_jpeg(encode(ramp, fmt="PNG")))
    assert grey.getpixel((0, 0))[0] < 10 and grey.getpixel((159, 159))[0] > 240

    # Transparent pixels land on a checkerboard, not black.
    clear = Image.new("RGBA", (64, 64), (255, 0, 0, 0))
    board = _decoded(thumbnail_jpeg(encode(clear, fmt="PNG")))
    assert {board.getpixel((2, 2)), board.getpixel((10, 2))} != {(0, 0, 0)}
    assert min(board.getpixel((2, 2))) > 180

    frames = [astronaut.resize((50, 40)), ImageOps.invert(astronaut.resize((50, 40)))]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:])
    assert _decoded(thumbnail_jpeg(gif.getvalue())).size == (50, 40)
    assert _decoded(thumbnail_jpeg(encode(Image.new("RGB", (1, 1)), fmt="PNG"))).size == (1, 1)


def test_unusable_bytes_are_a_thumbnail_error_with_a_reason():
    with pytest.raises(ThumbnailError, match="empty file"):
        thumbnail_jpeg(b"")
    with pytest.raises(ThumbnailError, match="cannot decode: UnidentifiedImageError"):
        thumbnail_jpeg(b"not an image at all")
    truncated = encode(photo("astronaut"), quality=90)[:2000]
    with pytest.raises(ThumbnailError, match="cannot decode"):
        thumbnail_jpeg(truncated)
    with pytest.raises(ThumbnailError, match="512x512 is too large to preview"):
        thumbnail_jpeg(encode(photo("astronaut"), quality=90), max_pixels=100_000)

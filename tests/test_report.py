"""Tests for the self-contained HTML report and its 2-D projection."""

from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image
from sift_worker.report import ReportData, Thumbnail, project_2d, render_report
from sift_worker.report.demo import build_demo_data

URL_ATTRS = {"src", "href", "xlink:href", "srcset", "action", "formaction", "poster", "data"}


class _Collector(HTMLParser):
    """Collects URL-bearing attributes, <img> sources, map points and table rows."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.urls: list[tuple[str, str, str]] = []
        self.img_srcs: list[str] = []
        self.circles_sel = 0
        self.circles_bg = 0
        self.titles: list[str] = []
        self.tags: list[str] = []
        self._group: list[str | None] = []
        self._in_title = False
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        a = dict(attrs)
        for name, value in attrs:
            if name in URL_ATTRS and value is not None:
                self.urls.append((tag, name, value))
        if tag == "img":
            self.img_srcs.append(a.get("src") or "")
        if tag == "g":
            self._group.append(a.get("class"))
        if tag == "circle" and self._group:
            if self._group[-1] == "sel":
                self.circles_sel += 1
            elif self._group[-1] == "bg":
                self.circles_bg += 1
        if tag == "title":
            self._in_title, self._text = True, []

    def handle_endtag(self, tag: str) -> None:
        if tag == "g" and self._group:
            self._group.pop()
        if tag == "title":
            self._in_title = False
            self.titles.append("".join(self._text))

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self._text.append(data)


def _parse(html: str) -> _Collector:
    c = _Collector()
    c.feed(html)
    c.close()
    return c


def _jpeg(colour: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, format="JPEG")
    return buf.getvalue()


def _data(
    n: int = 50,
    k: int = 5,
    *,
    names: list[str] | None = None,
    n_thumbs: int | None = None,
    corrupt: list[tuple[str, str]] | None = None,
) -> ReportData:
    rng = np.random.default_rng(1)
    filenames = names or [f"img_{i:05d}.jpg" for i in range(n)]
    n = len(filenames)
    ranks = np.zeros(n, dtype=np.int64)
    chosen = rng.choice(n, size=k, replace=False)
    ranks[chosen] = np.arange(1, k + 1)
    order = chosen  # chosen[r - 1] has rank r
    thumbs = [
        Thumbnail(filename=filenames[int(i)], rank=r, jpeg=_jpeg())
        for r, i in enumerate(order[: k if n_thumbs is None else n_thumbs], start=1)
    ]
    return ReportData(
        run_name="test-run",
        created="2024-01-02T03:04:05+00:00",
        model="tiny (random init)",
        strategy_summary=f"diversity (k-center greedy), nSamples={k}",
        counts={"listed": n + 2, "decoded": n, "corrupt": 2, "selected": k},
        timings={"list": 0.1, "embed": 2.5, "select": 0.2, "write": 0.05},
        filenames=filenames,
        points=rng.normal(size=(n, 2)).astype(np.float32),
        selected_rank=ranks,
        thumbnails=thumbs,
        corrupt=corrupt if corrupt is not None else [("bad_a.jpg", "cannot identify image file")],
        stop_reason=f"reached nSamples={k}",
        min_distance_curve=[float("inf"), *np.linspace(1.0, 0.2, k - 1).tolist()],
    )


# --- render_report -----------------------------------------------------------


def test_no_external_references() -> None:
    html = render_report(build_demo_data(n=60, k=8))
    parsed = _parse(html)
    assert parsed.urls, "expected at least the thumbnail data URIs"
    for tag, attr, value in parsed.urls:
        v = value.strip().lower()
        assert v.startswith(("data:", "#")), f"<{tag} {attr}={value[:60]!r}> is not inline"
        assert not v.startswith("//")
    # Nothing that could trigger a fetch anywhere, not even in CSS or SVG namespaces.
    assert "http://" not in html
    assert "https://" not in html
    assert "url(" not in html
    assert "@import" not in html
    assert not {"script", "link", "iframe", "object", "embed"} & set(parsed.tags)
    assert "default-src 'none'" in html  # CSP forbids fetches as a second line of defence


def test_document_structure_and_summary() -> None:
    data = _data(n=40, k=6)
    html = render_report(data)
    assert html.lstrip().lower().startswith("<!doctype html>")
    assert html.rstrip().endswith("</html>")
    for text in ("test-run", "tiny (random init)", "nSamples=6", "reached nSamples=6"):
        assert text in html
    assert "15.0%" in html  # 6 of 40 decoded
    assert 'role="img"' in html
    assert "aria-labelledby" in html
    assert "no external references" in html


def test_every_selected_filename_appears() -> None:
    data = _data(n=80, k=12)
    html = render_report(data, max_points=20)
    titles = _parse(html).titles
    for name, rank in zip(data.filenames, data.selected_rank.tolist(), strict=True):
        if rank:
            assert f"{name} (rank {rank})" in titles


def test_filenames_are_escaped() -> None:
    evil = '<script>alert("x")</script>&\'q.jpg'
    names = [evil, *[f"ok_{i}.jpg" for i in range(9)]]
    data = _data(names=names, k=10, corrupt=[(evil, "<b>bad</b> & worse")])
    html = render_report(data)
    assert "<script>" not in html
    assert "<b>bad</b>" not in html
    assert "&lt;script&gt;" in html
    assert "&lt;b&gt;bad&lt;/b&gt; &amp; worse" in html
    parsed = _parse(html)
    assert "script" not in parsed.tags
    # The parser decodes the escapes back to the exact name: nothing was lost.
    assert any(t.startswith(evil) for t in parsed.titles)


def test_long_filenames_shortened_with_full_name_in_title() -> None:
    long_name = "a-very-long-folder-name/" + "x" * 150 + "_final.jpg"
    names = [long_name, *[f"ok_{i}.jpg" for i in range(4)]]
    html = render_report(_data(names=names, k=5))
    assert f'title="{long_name}"' in html  # full name on hover
    assert "…" in html
    assert "_final.jpg</span>" in html  # the extension survives shortening
    captions = re.findall(r'<figcaption title="[^"]*">(.*?)</figcaption>', html)
    assert len(captions) == 5
    visible = [re.sub(r"<[^>]+>", "", c) for c in captions]
    assert all(len(v) < 60 for v in visible), visible  # no huge unbroken caption


def test_thumbnails_are_data_uris() -> None:
    data = _data(n=30, k=7)
    srcs = _parse(render_report(data)).img_srcs
    assert len(srcs) == 7
    for src in srcs:
        assert src.startswith("data:image/jpeg;base64,")
        raw = base64.b64decode(src.split(",", 1)[1])
        assert raw == data.thumbnails[0].jpeg


def test_thumbnail_cap() -> None:
    data = _data(n=30, k=12)
    html = render_report(data, max_thumbnails=5)
    assert len(_parse(html).img_srcs) == 5
    assert "first 5 of 12" in html
    # Uncapped: no notice.
    assert "first 12 of" not in render_report(data)


def test_caller_capped_thumbnails_are_explained() -> None:
    html = render_report(_data(n=30, k=12, n_thumbs=4))
    assert len(_parse(html).img_srcs) == 4
    assert "first 4 of 12" in html


def test_points_downsampled_with_all_selected_kept() -> None:
    data = _data(n=3000, k=40)
    html = render_report(data, max_points=500)
    parsed = _parse(html)
    assert parsed.circles_sel == 40
    assert parsed.circles_sel + parsed.circles_bg == 500
    assert "sample of 460 of the 2,960 unselected points" in html
    # Deterministic: same input, same document.
    assert render_report(data, max_points=500) == html


def test_selected_kept_even_when_over_max_points() -> None:
    parsed = _parse(render_report(_data(n=100, k=30), max_points=10))
    assert parsed.circles_sel == 30
    assert parsed.circles_bg == 0


def test_all_points_drawn_when_small() -> None:
    html = render_report(_data(n=200, k=10))
    parsed = _parse(html)
    assert (parsed.circles_sel, parsed.circles_bg) == (10, 190)
    assert "All 200 embedded samples are shown" in html


def test_corrupt_rows_present() -> None:
    rows = [(f"dir/broken_{i}.jpg", f"reason number {i}") for i in range(3)]
    html = render_report(_data(corrupt=rows))
    for name, reason in rows:
        assert re.search(rf"<td[^>]*>{re.escape(name)}</td><td>{re.escape(reason)}</td>", html)
    assert "No corrupt files" not in html


def test_no_corrupt_files_note() -> None:
    assert "No corrupt files" in render_report(_data(corrupt=[]))


def test_empty_run_renders() -> None:
    data = ReportData(
        run_name="empty",
        created="not a timestamp",
        model="m",
        strategy_summary="s",
        counts={},
        timings={},
        filenames=[],
        points=np.zeros((0, 2), dtype=np.float32),
        selected_rank=np.zeros(0, dtype=np.int64),
        thumbnails=[],
        corrupt=[],
        stop_reason="nothing to do",
        min_distance_curve=[],
    )
    html = render_report(data)
    assert "nothing to map" in html
    assert "No coverage curve" in html
    assert "not a timestamp" in html


def test_mismatched_lengths_rejected() -> None:
    data = _data(n=10, k=2)
    bad = ReportData(**{**data.__dict__, "points": np.zeros((9, 2))})
    with pytest.raises(ValueError, match="same length"):
        render_report(bad)


# --- project_2d ----------------------------------------------------------------


def _two_clusters(n: int, d: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    centres = rng.normal(size=(2, d)) * 5
    x = centres[labels] + rng.normal(scale=0.5, size=(n, d))
    return x.astype(np.float32), labels


def test_project_shape_dtype_and_determinism() -> None:
    x, _ = _two_clusters(200)
    a = project_2d(x)
    b = project_2d(x.copy())
    assert a.shape == (200, 2)
    assert a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert np.isfinite(a).all()


def test_project_separates_far_clusters() -> None:
    x, labels = _two_clusters(400)
    p = project_2d(x)
    m0, m1 = p[labels == 0].mean(axis=0), p[labels == 1].mean(axis=0)
    spread = max(p[labels == 0, 0].std(), p[labels == 1, 0].std())
    assert abs(m0[0] - m1[0]) > 5 * spread


def test_project_chunked_fit_matches_full_fit() -> None:
    x, labels = _two_clusters(3000, d=16, seed=3)
    full = project_2d(x, max_fit=10_000)
    sub = project_2d(x, max_fit=500)
    assert sub.shape == (3000, 2)
    np.testing.assert_array_equal(sub, project_2d(x, max_fit=500))
    # Fitting on a sample still separates the clusters and finds the same axis.
    assert abs(sub[labels == 0, 0].mean() - sub[labels == 1, 0].mean()) > 1.0
    corr = np.corrcoef(full[:, 0], sub[:, 0])[0, 1]
    assert corr > 0.99


def test_project_more_rows_than_chunk() -> None:
    x, _ = _two_clusters(70_000, d=4, seed=5)
    p = project_2d(x, max_fit=1_000)
    assert p.shape == (70_000, 2)
    assert np.isfinite(p).all()
    assert np.abs(p[-1000:]).sum() > 0  # the last chunk was projected too


def test_project_randomized_path_matches_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    from sift_worker.report import projection

    x, labels = _two_clusters(600, d=400, seed=7)
    assert min(x.shape) > projection._EXACT_MAX  # takes the randomized route
    p = project_2d(x)
    assert abs(p[labels == 0, 0].mean() - p[labels == 1, 0].mean()) > 1.0
    np.testing.assert_array_equal(p, project_2d(x))
    monkeypatch.setattr(projection, "_EXACT_MAX", 10_000)
    exact = project_2d(x)
    assert abs(np.corrcoef(p[:, 0], exact[:, 0])[0, 1]) > 0.999


@pytest.mark.parametrize("n", [0, 1, 2])
def test_project_tiny_n(n: int) -> None:
    x = np.arange(n * 5, dtype=np.float32).reshape(n, 5) + 1
    x[-1:, 0] += 10  # make two rows differ in direction
    p = project_2d(x)
    assert p.shape == (n, 2)
    assert np.isfinite(p).all()
    if n < 2:
        assert not p.any()
    else:
        assert p[0, 0] != p[1, 0]
        np.testing.assert_allclose(p[:, 1], 0.0, atol=1e-6)


def test_project_one_dimension_and_degenerate_rows() -> None:
    p = project_2d(np.array([[1.0], [2.0], [-3.0]], dtype=np.float32))
    assert p.shape == (3, 2)
    assert not p[:, 1].any()
    assert p[2, 0] != p[0, 0]
    z = project_2d(np.zeros((4, 3), dtype=np.float32))
    assert not z.any()
    nan = project_2d(np.array([[np.nan, 1.0], [1.0, 0.0], [0.0, 1.0]], dtype=np.float32))
    assert np.isfinite(nan).all()


def test_project_rejects_bad_shape() -> None:
    with pytest.raises(ValueError, match="2-D"):
        project_2d(np.zeros(3))

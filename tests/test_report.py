"""Tests for the self-contained HTML report and its 2-D projection."""

from __future__ import annotations

import base64
import dataclasses
import io
import re
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image
from sift_worker.report import (
    Distribution,
    DuplicateRow,
    ReportData,
    StrategyEffect,
    Thumbnail,
    bin_numeric,
    categorical_counts,
    make_distribution,
    project_2d,
    render_report,
)
from sift_worker.report.demo import build_demo_data
from sift_worker.report.render import (
    MAX_DISTRIBUTION_CATEGORIES,
    MAX_DUPLICATE_ROWS,
    MAX_PROBLEM_ROWS,
)

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


# --- distributions, duplicates, strategies, input problems -------------------


def _en(*labels: str) -> list[str]:
    """Range labels as bin_numeric writes them: "~" stands for the en dash."""
    return [label.replace("~", "\u2013") for label in labels]


def _section(html: str, heading_id: str) -> str:
    """The HTML of the <section> labelled by ``heading_id`` ("" when absent)."""
    m = re.search(rf'<section[^>]*aria-labelledby="{heading_id}".*?</section>', html, re.S)
    return m.group(0) if m else ""


def _rich(**overrides: object) -> ReportData:
    """Test data with every optional section filled in."""
    data = _data(n=40, k=10)
    extra: dict[str, object] = {
        "distributions": [
            Distribution(
                "metadata: weather",
                ["sunny", "rain", "missing"],
                before=[24, 12, 4],
                after=[4, 5, 1],
                target=[0.5, 0.5, float("nan")],
            ),
            Distribution("scores: blur", _en("0~0.5", "0.5~1.0"), before=[30, 10], after=[10, 0]),
        ],
        "duplicates": [
            DuplicateRow("a/copy (1).jpg", "a/copy.jpg", "exact", 0.0),
            DuplicateRow("b/edit.jpg", "b/orig.jpg", "near", 0.0312),
        ],
        "strategy_effects": [
            StrategyEffect("diversity[0]", "diversity on embeddings, strength 1", 0.52, 0.8),
            StrategyEffect("balance[1]", "balance on metadata: weather", 0.13, 0.2),
            StrategyEffect("threshold[2]", "threshold on scores: blur", 0.0, 0.0, excluded=7),
        ],
        "input_problems": [("meta/broken.jsonl", "line 3: invalid JSON")],
    }
    extra.update(overrides)
    return dataclasses.replace(data, **extra)  # type: ignore[arg-type]


def test_optional_sections_absent_by_default() -> None:
    html = render_report(_data())
    for heading in ("dists-h", "dups-h", "strategies-h", "problems-h"):
        assert f'id="{heading}"' not in html
    for text in ("Distributions", "Duplicates removed", "Strategies", "Input problems"):
        assert f">{text}</h2>" not in html
    assert "dchart" not in html.split("</style>", 1)[1]
    assert "Balance target" not in html
    labels = re.findall(r'<div class="label">([^<]*)</div>', html)
    assert labels == ["listed", "decoded", "corrupt", "selected", "% selected"]


def test_distributions_render_shares_counts_and_targets() -> None:
    html = render_report(_rich())
    dists = _section(html, "dists-h")
    assert ">metadata: weather</h3>" in dists
    assert ">scores: blur</h3>" in dists
    assert "40 candidates · 10 selected" in dists
    # Shares, not counts, drive the bars: 24 of 40 is 60%, 4 of 10 is 40%.
    assert ">60%</text>" in dists
    assert ">40%</text>" in dists
    assert "sunny: 60.0% of all candidates (24 of 40), 40.0% of the selection (4 of 10)" in dists
    assert "target 50.0%" in dists
    # One target mark per category with a finite target; NaN means no mark.
    assert dists.count('<line class="t"') == 2
    assert "Balance target" in dists
    assert "rain: 30.0% of all candidates (12 of 40), 50.0% of the selection (5 of 10)" in dists
    # The counts table has every category, with the target column only where given.
    assert "<td>missing</td>" in dists
    assert dists.count(">Target</th>") == 1
    assert 'role="img"' in dists
    assert 'aria-labelledby="dist-0-title"' in dists
    # Bars are proportional to share: sunny before (60%) is 1.5x sunny after (40%).
    widths = [float(w) for w in re.findall(r'<rect class="b"[^>]*width="([\d.]+)"', dists)]
    after = [float(w) for w in re.findall(r'<rect class="a"[^>]*width="([\d.]+)"', dists)]
    assert widths[0] == pytest.approx(1.5 * after[0], rel=0.01)


def test_distribution_without_target_has_no_marks() -> None:
    dist = Distribution("class (predictions)", ["cat", "dog"], before=[5, 5], after=[1, 0])
    html = render_report(_rich(distributions=[dist]))
    assert '<line class="t"' not in html
    assert "Balance target" not in html
    assert ">Target</th>" not in html


def test_distribution_length_mismatch_rejected() -> None:
    bad = Distribution("x", ["a", "b"], before=[1, 2], after=[1])
    with pytest.raises(ValueError, match="same length"):
        render_report(_rich(distributions=[bad]))


def test_distribution_category_cap() -> None:
    n = MAX_DISTRIBUTION_CATEGORIES + 5
    dist = Distribution("many", [f"c{i:02d}" for i in range(n)], before=[1] * n, after=[0] * n)
    section = _section(render_report(_rich(distributions=[dist])), "dists-h")
    assert section.count('<rect class="b"') == MAX_DISTRIBUTION_CATEGORIES
    assert "5 more categories not drawn" in section
    assert f"<td>c{n - 1:02d}</td>" in section  # the table still has them all


def test_empty_selection_distribution() -> None:
    dist = Distribution("w", ["a", "b"], before=[3, 1], after=[0, 0])
    section = _section(render_report(_rich(distributions=[dist])), "dists-h")
    assert "4 candidates · 0 selected" in section
    assert "0 of 0" in section


def test_duplicates_table_and_card() -> None:
    html = render_report(_rich())
    dups = _section(html, "dups-h")
    assert "Duplicates removed" in dups
    assert re.search(r"a/copy \(1\)\.jpg</td><td[^>]*>a/copy\.jpg</td>", dups)
    assert '<span class="kind exact">exact</span>' in dups
    assert '<span class="kind near">near</span>' in dups
    assert ">0.0312</td>" in dups
    cards = dict(re.findall(r'<div class="label">([^<]*)</div>\s*<div class="value">([^<]*)', html))
    assert cards["duplicates"] == "2"
    assert cards["input problems"] == "1"
    assert "first 2 of" not in dups


def test_duplicates_card_prefers_pipeline_counter() -> None:
    data = _rich()
    data = dataclasses.replace(data, counts={**data.counts, "duplicates": 1234})
    html = render_report(data)
    cards = re.findall(r'<div class="label">([^<]*)</div>\s*<div class="value">([^<]*)', html)
    assert ("duplicates", "1,234") in cards
    assert [label for label, _ in cards].count("duplicates") == 1


def test_duplicates_cap() -> None:
    rows = [DuplicateRow(f"d/{i}.jpg", "orig.jpg", "exact", 0.0) for i in range(600)]
    html = render_report(_rich(duplicates=rows))
    dups = _section(html, "dups-h")
    assert dups.count("<tr>") - 1 == MAX_DUPLICATE_ROWS  # minus the header row
    assert f"first {MAX_DUPLICATE_ROWS} of 600 duplicates" in dups
    cards = dict(re.findall(r'<div class="label">([^<]*)</div>\s*<div class="value">([^<]*)', html))
    assert cards["duplicates"] == "600"


def test_strategies_table() -> None:
    strat = _section(render_report(_rich()), "strategies-h")
    assert "diversity[0]" in strat
    assert "diversity on embeddings, strength 1" in strat
    assert ">0.52</td>" in strat
    assert "<strong>80%</strong>" in strat
    assert "width: 80.0%" in strat
    assert "<strong>20%</strong>" in strat
    assert "filter only" in strat
    assert ">Excluded</th>" in strat
    assert ">7</td>" in strat
    assert 'aria-label="balance[1]: 20% of the objective"' in strat


def test_strategies_without_thresholds_hide_excluded_column() -> None:
    effects = [StrategyEffect("diversity[0]", "diversity", 1.0, 1.0)]
    strat = _section(render_report(_rich(strategy_effects=effects)), "strategies-h")
    assert "Excluded" not in strat
    assert "<strong>100%</strong>" in strat


def test_input_problems_table_and_cap() -> None:
    html = render_report(_rich())
    problems = _section(html, "problems-h")
    assert re.search(r">meta/broken\.jsonl</td><td[^>]*>line 3: invalid JSON</td>", problems)
    many = [(f"p/{i}.json", "bad") for i in range(MAX_PROBLEM_ROWS + 3)]
    problems = _section(render_report(_rich(input_problems=many)), "problems-h")
    assert problems.count("<tr>") - 1 == MAX_PROBLEM_ROWS
    assert f"first {MAX_PROBLEM_ROWS:,} of {MAX_PROBLEM_ROWS + 3:,} input problems" in problems


def test_new_sections_escape_text() -> None:
    evil = '<script>alert("x")</script>&'
    html = render_report(
        _rich(
            distributions=[Distribution(evil, [evil, "ok"], [1, 1], [1, 0], [0.5, 0.5])],
            duplicates=[DuplicateRow(evil, evil, evil, 0.1)],
            strategy_effects=[StrategyEffect(evil, evil, 1.0, 1.0, excluded=None)],
            input_problems=[(evil, evil)],
        )
    )
    parsed = _parse(html)
    assert "script" not in parsed.tags
    assert "<script>" not in html
    assert html.count("&lt;script&gt;") >= 8
    # The unknown kind falls back to a neutral badge class, never raw text in an attribute.
    assert 'class="kind other"' in html


def test_demo_has_every_section() -> None:
    data = build_demo_data()
    assert len(data.duplicates) == 12
    assert len(data.strategy_effects) == 3
    assert len(data.input_problems) == 2
    weather = next(d for d in data.distributions if "weather" in d.name)
    assert weather.target is not None
    html = render_report(data)
    for heading in ("dists-h", "dups-h", "strategies-h", "problems-h"):
        assert _section(html, heading)


# --- bin_numeric / categorical_counts -----------------------------------------


def test_bin_numeric_ranges_and_missing() -> None:
    values = np.array([0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75, 0.95, np.nan, 0.2])
    selected = np.array([0, 1, 9])
    labels, before, after = bin_numeric(values, selected, bins=5)
    assert labels == [*_en("0~0.2", "0.2~0.4", "0.4~0.6", "0.6~0.8", "0.8~1.0"), "missing"]
    # 0.2 sits on an edge and goes up; the last range includes its top.
    assert before == [2, 3, 2, 2, 1, 1]
    assert after == [2, 0, 0, 0, 0, 1]
    assert sum(before) == values.size
    assert sum(after) == selected.size


def test_bin_numeric_respects_bin_count() -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(size=1000)
    mask = rng.random(1000) < 0.1
    for bins in (2, 3, 5, 8, 12):
        labels, before, after = bin_numeric(values, mask, bins=bins)
        assert len(labels) <= bins
        assert sum(before) == 1000
        assert sum(after) == int(mask.sum())


def test_bin_numeric_mask_and_indices_agree() -> None:
    values = np.linspace(0, 10, 50)
    mask = np.zeros(50, dtype=bool)
    mask[[3, 17, 40]] = True
    assert bin_numeric(values, mask) == bin_numeric(values, np.array([3, 17, 40]))
    with pytest.raises(ValueError, match="one entry per value"):
        bin_numeric(values, mask[:10])


def test_bin_numeric_few_distinct_values_and_integers() -> None:
    labels, before, after = bin_numeric(np.array([1, 2, 2, 3, 5, 5, 5]), np.array([0, 4]))
    assert labels == ["1", "2", "3", "5"]
    assert before == [1, 2, 1, 3]
    assert after == [1, 0, 0, 1]
    labels, before, _ = bin_numeric(np.arange(100), np.array([], dtype=np.int64), bins=5)
    assert labels == _en("0~19", "20~39", "40~59", "60~79", "80~99")
    assert before == [20] * 5
    labels, _, _ = bin_numeric(np.arange(0, 9e7, 1e6), np.array([0]), bins=5)
    assert labels[0] == _en("0~20M")[0]


def test_bin_numeric_none_nan_and_empty() -> None:
    labels, before, after = bin_numeric(
        np.array([None, 1.0, np.nan], dtype=object), np.array([True, False, True])
    )
    assert labels == ["1", "missing"]
    assert (before, after) == ([1, 2], [0, 2])
    assert bin_numeric(np.array([np.nan, np.nan]), np.array([1])) == (["missing"], [2], [1])
    assert bin_numeric(np.array([]), np.array([], dtype=bool)) == ([], [], [])
    labels, before, _ = bin_numeric(np.array([-3.0, 0.5, 2.0, 7.5]), np.array([0]), bins=1)
    assert len(labels) == 1
    assert before == [4]
    with pytest.raises(ValueError, match="bins"):
        bin_numeric(np.array([1.0]), np.array([0]), bins=0)


def test_bin_numeric_negative_ranges() -> None:
    values = np.array([-4.0, -2.5, -1.0, 0.0, 1.0, 2.5, 4.0, 4.5, 3.0])
    labels, before, _ = bin_numeric(values, np.array([0]), bins=4)
    assert labels[0].startswith("-")
    assert " to " in labels[0]
    assert sum(before) == values.size


def test_categorical_counts_other_and_missing() -> None:
    values = np.array(
        ["a", "b", "a", None, "c", float("nan"), "a", "b", "d", "", "c", "e"], dtype=object
    )
    selected = np.array([0, 3, 4, 8])
    labels, before, after = categorical_counts(values, selected, max_categories=3)
    # Most frequent first (ties by name), then the overflow bucket, then missing.
    assert labels == ["a", "b", "c", "other", "missing"]
    assert before == [3, 2, 2, 2, 3]
    assert after == [1, 0, 1, 1, 1]
    assert sum(before) == values.size
    assert sum(after) == selected.size


def test_categorical_counts_no_overflow_no_missing() -> None:
    labels, before, after = categorical_counts(
        np.array(["x", "y", "x"]), np.array([True, True, False])
    )
    assert labels == ["x", "y"]
    assert (before, after) == ([2, 1], [1, 1])
    assert categorical_counts(np.array([], dtype=object), np.array([], dtype=np.int64)) == (
        [],
        [],
        [],
    )
    with pytest.raises(ValueError, match="max_categories"):
        categorical_counts(np.array(["x"]), np.array([0]), max_categories=0)


def test_categorical_counts_real_values_named_like_buckets() -> None:
    values = np.array(["other", "other", "missing", "missing", "z", None], dtype=object)
    labels, before, _ = categorical_counts(values, np.array([0]), max_categories=2)
    assert labels == ["missing", "other", "(other)", "(missing)"]
    assert before == [2, 2, 1, 1]


def test_make_distribution_picks_binning_and_maps_target() -> None:
    weather = np.array(["sun", "rain", "sun", None], dtype=object)
    dist = make_distribution("w", weather, np.array([1]), target={"sun": 0.5, "rain": 0.5})
    assert list(dist.categories) == ["sun", "rain", "missing"]
    assert dist.target is not None
    assert list(dist.target)[:2] == [0.5, 0.5]
    assert np.isnan(list(dist.target)[2])
    blur = make_distribution("b", np.linspace(0, 1, 20), np.array([0, 1]), bins=4)
    assert len(blur.categories) <= 4
    assert blur.target is None
    assert sum(blur.before) == 20
    assert sum(blur.after) == 2


def test_long_category_labels_shortened_with_full_name_in_tooltip() -> None:
    long_name = "camera-07-north-entrance-parking-level-2"
    dist = Distribution("cams", [long_name, "cam1"], before=[3, 1], after=[1, 1])
    section = _section(render_report(_rich(distributions=[dist])), "dists-h")
    labels = re.findall(r'<text class="cat"[^>]*>([^<]*)</text>', section)
    assert labels[1] == "cam1"
    assert "…" in labels[0]
    assert len(labels[0]) < 16
    assert f"<title>{long_name}: 75.0% of all candidates" in section
    assert f"<td>{long_name}</td>" in section

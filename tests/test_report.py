"""``lst-fast report``: the HTML page of a small real sweep, checked in headless Chromium (one gallery element per
valid pair, the tables of ``lst-fast tables``, sorting and filtering, no request leaving the file, a non-blank
screenshot) and without a browser (the pair data, escaping, bad input); and a made-up 5000-pair report, paged."""

import argparse
import base64
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from lst_fast import cli, data
from lst_fast.sweep import report

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium is not installed (Debian package chromium; .ci/run installs it)"
)
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
    "--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=5000",
]


# --- the sweep and its report (built once for the module) ---------------------------------------------------


@pytest.fixture(scope="module")
def sweep(image_folder, tiny_checkpoint, tmp_path_factory):
    """A tiny sweep (4 images x 2 rounds, 4 traversal units, triangles) and its report: (folder, report file)."""
    path, arch, classes = tiny_checkpoint
    out = tmp_path_factory.mktemp("report") / "sweep"
    args = [
        "sweep", "--model", arch, "--checkpoint", str(path), "--num-classes", str(classes),
        "--data", f"folder:{image_folder}", "--out", str(out), "--image-size", "16", "--num-samples", "4",
        "--rounds", "2", "--batch-size", "2", "--iters", "2", "--min-conf", "0", "--eval-batch-size", "8",
        "--no-progress", "--workers", "0",
    ]
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert cli.main(args) == 0
        assert cli.main(["report", str(out), "--out", str(out / "report.html"), "--pairs", "2"]) == 0
    finally:
        torch.set_num_threads(before)
    return out, out / "report.html"


def valid_pairs(out) -> list[dict]:
    """Every valid pair of the sweep's unit files, in plan order (rounds, then batches), read directly."""
    pairs = []
    for path in sorted((out / "units" / "traverse").glob("r*_b*.safetensors")):
        unit, round_index = load_file(str(path)), int(path.name[1:4])
        for k in unit["valid"].nonzero().flatten().tolist():
            s, t = int(unit["source"][k]), int(unit["target"][k])
            pairs.append({"id": f"r{round_index}-s{s}-t{t}", "label": int(unit["labels"][k]),
                          "l2": float(unit["dist_l2"][k]), "final_conf": float(unit["final_conf"][k])})
    return pairs


def pair_blobs(text: str) -> list[dict]:
    """The gallery data embedded in a report, one dict per sweep."""
    found = re.findall(r'<script type="application/json" class="pair-data">(.*?)</script>', text, re.DOTALL)
    return [json.loads(blob) for blob in found]


class Dom(HTMLParser):
    """Every start tag with its attributes, and the cells of each ``figure.table``, from serialised HTML."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.tables: dict[str, list[list[str]]] = {}
        self._table = self._row = self._cell = None
        self.feed(text)

    def _start(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "figure" and "data-table" in attrs:
            self._table = self.tables.setdefault(attrs["data-table"], [])
        elif tag == "tr" and self._table is not None:
            self._row = []
            self._table.append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    handle_starttag = _start

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "figure":
            self._table = self._row = None

    def handle_data(self, text):
        if self._cell is not None:
            self._cell.append(text)

    def attributes(self, name: str) -> list[str]:
        return [attrs[name] for _, attrs in self.tags if name in attrs]

    def sections(self, cls: str) -> list[dict]:
        return [attrs for tag, attrs in self.tags if tag == "section" and attrs.get("class") == cls]


def chromium(tmp_path, *args) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    command = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, check=True)


def rendered(tmp_path, page, fragment: str = "") -> Dom:
    """The DOM of ``page`` after its script ran, as headless Chromium serialises it."""
    url = page.resolve().as_uri() + (f"#{fragment}" if fragment else "")
    return Dom(chromium(tmp_path, "--dump-dom", url).stdout)


def markdown_tables(text: str) -> list[list[list[str]]]:
    """The cells of each Markdown table in ``lst-fast tables`` output (the separator row left out)."""
    tables, current = [], None
    for line in text.splitlines():
        if not line.startswith("|"):
            current = None
            continue
        if current is None:
            current = []
            tables.append(current)
        if not set(line) <= set("|-"):
            current.append([cell.strip() for cell in line.strip("|").split("|")])
    return tables


# --- without a browser ------------------------------------------------------------------------------------


def test_the_gallery_data_holds_every_valid_pair_with_its_unit_values(sweep):
    out, page = sweep
    (blob,) = pair_blobs(page.read_text())
    expected = valid_pairs(out)
    assert [p["id"] for p in blob["pairs"]] == [p["id"] for p in expected]
    for got, want in zip(blob["pairs"], expected):
        as_float32 = torch.tensor([got["dist"]["l2"], got["final_conf"]], dtype=torch.float32).tolist()
        assert as_float32 == [want["l2"], want["final_conf"]]  # 9 significant digits keep a float32 exactly
        assert got["source_class"] == f"class {want['label']}"  # a 10-class model on unlabelled data
        assert got["output"].startswith("data:image/jpeg;base64,")
    assert set(blob["images"]) == {str(p[k]) for p in blob["pairs"] for k in ("source", "target")}


def test_every_thumbnail_is_a_small_jpeg_of_its_image(photos):
    uri = report.thumbnail(photos[0], 48)
    assert uri.startswith("data:image/jpeg;base64,")
    with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as image:
        assert image.format == "JPEG" and image.size == (48, 48)
        restored = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32)) / 255
    expected = torch.nn.functional.interpolate(photos[:1], size=48, mode="area")[0].permute(1, 2, 0)
    assert (restored - expected).abs().mean() < 0.05  # the same picture, up to resampling and JPEG


def test_the_page_is_self_contained(sweep):
    text = sweep[1].read_text()
    dom = Dom(text)
    linked = dom.attributes("src") + dom.attributes("href")
    assert linked and all(value.startswith("data:") for value in linked), linked
    assert not [tag for tag, _ in dom.tags if tag in ("link", "iframe", "object", "embed")]
    assert len([a for tag, a in dom.tags if tag == "img" and a.get("src", "").startswith("data:image/png")]) >= 3
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, re.IGNORECASE)
    assert "@import" not in text and "url(" not in text


def test_names_and_settings_are_escaped():
    nasty = '</script><script>alert("x")</script> & <b>'
    page = report.render_html(synthetic_report(3, images=2, distinct_outputs=1, class_name=nasty))
    assert "<script>alert" not in page and "<b>" not in page
    (blob,) = pair_blobs(page)
    assert blob["pairs"][0]["source_class"] == nasty
    assert Dom(page).sections("sweep")  # the structure survived


def test_bad_input_is_refused(sweep, tmp_path, capsys):
    out, _ = sweep
    with pytest.raises(ValueError, match="thumb_size must be an int >= 1, got 0"):
        report.write_report([out], tmp_path / "r.html", thumb_size=0)
    with pytest.raises(ValueError, match="page_size must be an int >= 1"):
        report.render_html(synthetic_report(1, images=2, distinct_outputs=1), page_size=0)
    with pytest.raises(ValueError, match="is a folder"):
        report.write_report([out], tmp_path)
    assert cli.main(["report", str(tmp_path), "--out", str(tmp_path / "r.html")]) == 2
    assert "is not a sweep folder" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


def test_every_option_is_explained(capsys):
    (commands,) = [a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    sub = commands.choices["report"]
    for action in sub._actions:
        assert action.help and len(action.help) > 10, f"{action.option_strings or action.dest} has no help"
    with pytest.raises(SystemExit) as exit_:
        cli.main(["report", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert all(option in text for action in sub._actions for option in action.option_strings)


def test_without_figures_the_page_has_none(sweep, tmp_path):
    out, _ = sweep
    page = report.write_report([out, out], tmp_path / "two.html", figures=False, page_size=3)
    text = page.read_text()
    assert "figure class=\"plot\"" not in text and "data:image/png" not in text
    dom = Dom(text)
    assert len(dom.sections("gallery")) == 2  # one gallery per sweep, the tables side by side
    # Table 1, Table 2 and the cost table: a header and one row per sweep each
    assert [len(rows) for rows in dom.tables.values()] == [3, 3, 3]


# --- in headless Chromium ---------------------------------------------------------------------------------


@needs_chromium
def test_the_browser_shows_one_element_per_valid_pair(sweep, tmp_path):
    out, page = sweep
    dom = rendered(tmp_path, page)
    expected = [p["id"] for p in valid_pairs(out)]
    (gallery,) = dom.sections("gallery")
    assert gallery["data-pairs"] == gallery["data-matching"] == str(len(expected))
    assert dom.attributes("data-pair") == expected  # in plan order: all on the first page


@needs_chromium
def test_the_tables_are_those_of_lst_fast_tables(sweep, tmp_path, capsys):
    out, page = sweep
    assert cli.main(["tables", str(out)]) == 0
    expected = markdown_tables(capsys.readouterr().out)
    dom = rendered(tmp_path, page)
    assert len(expected) == 3 and [dom.tables[k] for k in sorted(dom.tables)] == expected  # Tables 1, 2, cost


@needs_chromium
def test_sorting_and_filtering_reorder_the_gallery(sweep, tmp_path):
    out, page = sweep
    pairs = valid_pairs(out)
    by_l2 = [p["id"] for p in sorted(pairs, key=lambda p: p["l2"])]
    assert by_l2 != [p["id"] for p in pairs], "the sweep's pairs happen to be in L2 order; sorting would be untested"
    assert rendered(tmp_path, page, "sort=l2").attributes("data-pair") == by_l2
    descending = [p["id"] for p in sorted(pairs, key=lambda p: -p["final_conf"])]
    assert rendered(tmp_path, page, "sort=final_conf&order=desc").attributes("data-pair") == descending
    label = pairs[0]["label"]
    same_class = [p["id"] for p in pairs if p["label"] == label]
    dom = rendered(tmp_path, page, f"class=class%20{label}")
    assert dom.attributes("data-pair") == same_class
    assert dom.sections("gallery")[0]["data-matching"] == str(len(same_class))
    assert rendered(tmp_path, page, "class=no%20such%20class").attributes("data-pair") == []


def page_requests(net_log) -> list[str]:
    """URLs that pages loaded from file:// asked the network for (Chromium's own background requests left out)."""
    log = json.loads(net_log.read_text())
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return [
        e["params"]["url"] for e in log["events"]
        if e["type"] == start and e["params"].get("network_isolation_key", "").startswith("file://")
        and not e["params"]["url"].startswith(("file:", "data:"))
    ]


@needs_chromium
def test_no_request_leaves_the_file(sweep, tmp_path):
    control = tmp_path / "control.html"
    control.write_text('<img src="http://example.invalid/x.png"><link rel="stylesheet" href="https://a.invalid/s">')
    for page, log in ((control, tmp_path / "control.json"), (sweep[1], tmp_path / "report.json")):
        chromium(tmp_path, f"--log-net-log={log}", "--dump-dom", page.resolve().as_uri())
    assert sorted(page_requests(tmp_path / "control.json")) == ["http://example.invalid/x.png", "https://a.invalid/s"]
    assert page_requests(tmp_path / "report.json") == []
    dom = rendered(tmp_path, sweep[1])  # after the script built the gallery
    external = [v for _, attrs in dom.tags for v in attrs.values()
                if v and (re.match(r"\s*//", v) or "http://" in v or "https://" in v)]
    assert external == []


@needs_chromium
def test_the_screenshot_is_not_blank(sweep, tmp_path):
    shot = tmp_path / "shot.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,900", sweep[1].resolve().as_uri())
    with Image.open(shot) as image:
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert image.size == (1200, 900)
    assert len(colours) > 100  # text, tables and figures, not one flat colour
    assert max(colours)[0] < 0.95 * 1200 * 900  # not (nearly) all white


# --- a large, made-up sweep -------------------------------------------------------------------------------


def synthetic_report(
    pairs: int, *, images: int = 1000, distinct_outputs: int | None = None, rounds: int = 5, class_name: str = "",
    thumb_size: int = report.THUMB_SIZE,
) -> report.ReportData:
    """A report of one made-up sweep of ``pairs`` pairs over ``images`` images (no LST run): the bundled photos at
    thumbnail size, tinted per image, as sources and targets, a noisy target as each output; ``distinct_outputs``
    output thumbnails (default: one per pair) are cycled through the pairs."""
    photos = torch.nn.functional.interpolate(data.load_embedded_photos()[0], size=thumb_size, mode="area")
    g = torch.Generator().manual_seed(0)
    tints = torch.rand(images, 3, 1, 1, generator=g) * 0.4 + 0.8
    pictures = [(photos[p % len(photos)] * tints[p]).clamp(0, 1) for p in range(images)]
    outputs = [report.thumbnail((pictures[i % images] + 0.02 * torch.randn(pictures[0].shape, generator=g)).clamp(0, 1))
               for i in range(distinct_outputs or pairs)]
    stats = torch.rand(pairs, 4, generator=g)
    made = [
        report.PairData(
            round=i % rounds, source=i // rounds % images, target=(i // rounds + 1 + i % rounds) % images,
            source_class=class_name or f"class {i // rounds % 7}", target_class=f"class {(i + 1) % 7}",
            distances={"l2": float(stats[i, 0]), "linf": float(stats[i, 1])},
            values={"final_conf": float(stats[i, 2]), "init_conf": float(stats[i, 3]), "accepted": i % 50,
                    "evaluations": 100 + i % 37, "final_step_size": None},
            output=outputs[i % len(outputs)],
        )
        for i in range(pairs)
    ]
    shown = sorted({p.source for p in made} | {p.target for p in made})
    sweep = report.SweepData(
        label="synthetic", config={"model": "made-up", "data": "bundled photos", "rounds": rounds},
        created_by={}, note=None, units={"traverse": (1, 1)}, conditions=[],
        distance_titles={"l2": "L2/sqrt(D)", "linf": "Linf"},
        images={p: report.thumbnail(pictures[p]) for p in shown}, image_names={p: f"image {p}" for p in shown},
        pairs=made,
    )
    table = report.TableData("Table 1", ["model", "pairs"], [["made-up", str(pairs)]], [])
    return report.ReportData(tables=[table], sweeps=[sweep])


@pytest.mark.slow
@needs_chromium
def test_a_5000_pair_gallery_is_built_page_by_page(tmp_path):
    page = tmp_path / "large.html"
    made = synthetic_report(5000, distinct_outputs=16, thumb_size=16)  # small thumbnails: a quick test
    page.write_text(report.render_html(made, page_size=48))
    ids = [f"r{i % 5}-s{i // 5 % 1000}-t{(i // 5 + 1 + i % 5) % 1000}" for i in range(5000)]
    first = rendered(tmp_path, page)
    (gallery,) = first.sections("gallery")
    assert (gallery["data-pairs"], gallery["data-matching"], gallery["data-pages"]) == ("5000", "5000", "105")
    assert first.attributes("data-pair") == ids[:48]  # only the page on view is built
    last = rendered(tmp_path, page, "page=105")
    assert last.attributes("data-pair") == ids[104 * 48:] and len(ids[104 * 48:]) == 8
    evaluations = rendered(tmp_path, page, "sort=evaluations&order=desc&per=10").attributes("data-pair")
    assert evaluations == [ids[i] for i in sorted(range(5000), key=lambda i: -(100 + i % 37))[:10]]

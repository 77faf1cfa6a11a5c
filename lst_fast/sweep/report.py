"""``lst-fast report``: one self-contained HTML page of one or more sweep folders.

The page holds each sweep's configuration and provenance, Table 1 and Table 2 (the numbers of
:mod:`lst_fast.sweep.tables`, several sweeps side by side), the figures of ``lst-fast plot``
(:func:`lst_fast.sweep.figures.plot_sweep`, embedded as PNG) and a gallery of every valid pair (source, target
and LST output thumbnails, classes, confidences, distances), sortable and filterable by source class. Nothing is
fetched: images are data URIs, style and script are inline, so the file opens from disk in any browser.

The gallery's pairs travel as one JSON blob per sweep; a few lines of plain JavaScript build the elements of the
page on view only, so a report of thousands of pairs opens quickly. The page honours its URL fragment
(``report.html#sort=l2&order=desc&class=tabby&page=2&per=96``; ``per=0`` shows every pair on one page) and
writes the controls' state back into it, so a view can be bookmarked.

:func:`read_sweeps` is the only function here that knows sweep folders (manifest, plan, unit files, the tables
code, the figures); everything else renders the plain data it returns (:class:`ReportData`).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

import lst_fast
from lst_fast import data
from lst_fast.choices import PAGE_SIZE, THUMB_SIZE
from lst_fast.sweep.figures import class_namer, image_name, plot_sweep
from lst_fast.sweep.folder import open_sweep
from lst_fast.sweep.schema import DISTANCE_TITLES
from lst_fast.sweep.tables import cost_table, distance_table, load_results, provenance_notes, triangle_table

JPEG_QUALITY = 80
# Per-pair values besides the distances that the gallery shows and sorts by, with their titles; a value a
# sweep's units do not record is None for its pairs.
PAIR_VALUES = {
    "final_conf": "final confidence", "init_conf": "initial confidence", "accepted": "accepted steps",
    "evaluations": "evaluations", "final_step_size": "final step size",
}


@dataclass
class TableData:
    """One table of ``lst-fast tables``: its title, columns, rows of formatted cells, and notes."""

    title: str
    columns: list[str]
    rows: list[list[str]]
    notes: list[str]


@dataclass
class FigureData:
    """One figure of ``lst-fast plot``: its file name and PNG bytes."""

    name: str
    png: bytes


@dataclass
class PairData:
    """One valid pair of a sweep, in plain values."""

    round: int
    source: int  # positions in the sweep's image selection
    target: int
    source_class: str
    target_class: str
    distances: dict[str, float]  # distance key (``l2``, ...) -> value
    values: dict[str, float | int | None]  # PAIR_VALUES key -> value (None: not recorded)
    output: str  # the LST output's thumbnail, a data URI

    @property
    def id(self) -> str:
        """The pair's ``data-pair`` attribute: round, source and target."""
        return f"r{self.round}-s{self.source}-t{self.target}"


@dataclass
class SweepData:
    """What the report shows of one sweep folder."""

    label: str  # the folder, as given
    config: dict  # the manifest's configuration
    created_by: dict  # what started the sweep (versions, device, command)
    note: str | None  # the manifest's note (e.g. why LPIPS is left out)
    units: dict[str, tuple[int, int]]  # (finished, total) per kind of unit
    conditions: list[str]  # the conditions its units were computed under, one line each
    distance_titles: dict[str, str]  # the sweep's distances, key -> title, in table order
    images: dict[int, str]  # selection position -> thumbnail data URI (the pairs' sources and targets)
    image_names: dict[int, str]  # selection position -> file or photo name
    pairs: list[PairData]
    figures: list[FigureData] = field(default_factory=list)


@dataclass
class ReportData:
    """Everything one report shows: the tables of all sweeps side by side, then each sweep."""

    tables: list[TableData]
    sweeps: list[SweepData]
    thumb_size: int = THUMB_SIZE  # pixels, how large the gallery shows its thumbnails


def write_report(
    dirs: Sequence[str | Path],
    out: str | Path,
    *,
    figures: bool = True,
    figure_pairs: int = 4,
    thumb_size: int = THUMB_SIZE,
    page_size: int = PAGE_SIZE,
    device: str | None = None,
) -> Path:
    """Write the report of the sweep folders ``dirs`` to the HTML file ``out``.

    Args:
        dirs: sweep folders written by ``lst-fast sweep`` (finished or not).
        out: the HTML file to write (its folder is created).
        figures: draw the figures of ``lst-fast plot`` (loads each sweep's model; a few model calls).
        figure_pairs: how many pairs and sources the figures show.
        thumb_size: the longest side of the gallery thumbnails, in pixels.
        page_size: gallery elements per page.
        device: torch device for the figures (default: cuda if available, else cpu).

    Returns:
        The path written.

    Raises:
        ValueError: a bad option, or a folder whose tables cannot be read.
        FileNotFoundError: a folder holds no sweep.
    """
    _check_count("thumb_size", thumb_size)
    _check_count("page_size", page_size)
    _check_count("figure_pairs", figure_pairs)
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"out must be an HTML file, but {str(out)!r} is a folder")
    report = read_sweeps(dirs, figures=figures, figure_pairs=figure_pairs, thumb_size=thumb_size, device=device)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(report, page_size=page_size), encoding="utf-8")
    return out


def _check_count(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def read_sweeps(
    dirs: Sequence[str | Path], *, figures: bool = True, figure_pairs: int = 4, thumb_size: int = THUMB_SIZE,
    device: str | None = None,
) -> ReportData:
    """Read sweep folders into the plain data of a report: the tables, and per sweep its configuration,
    provenance, figures and every valid pair of its finished, uncorrupted traversal units (in plan order).

    This is the report's one link to the sweep internals (folder layout, plan, unit fields, tables, figures).

    Raises:
        ValueError: no folders, or a folder whose tables cannot be read.
        FileNotFoundError: a folder holds no sweep, or its data set is gone.
    """
    if not dirs:
        raise ValueError("dirs must name at least one sweep folder")
    results = [load_results(d) for d in dirs]
    tables = [distance_table(results)] + ([triangle_table(results)] if any(r.config["triangles"] for r in results)
                                          else []) + [cost_table(results)]
    tables[-1].notes += provenance_notes(results)
    sweeps = []
    for out_dir, result in zip(dirs, results):
        folder = open_sweep(out_dir)
        manifest, config, indices = folder.manifest, folder.identity, folder.selection.indices
        dataset = data.open_dataset(config["data"], image_size=config.get("image_size"))
        # the model's classes without loading it: the checkpoint's head, the data set's own (CIFAR-10), ImageNet-1k
        classes = class_namer(dataset, config.get("num_classes") or len(getattr(dataset, "classes", ())) or 1000)
        pairs = []
        rounds = {unit.name: unit.round for unit in folder.planned("traverse")}
        for unit in folder.survey("traverse", keep=None).finished:  # Table 1's notes list the corrupt units
            tensors = unit.tensors
            for k in tensors["valid"].nonzero().flatten().tolist():
                pairs.append(PairData(
                    round=rounds[unit.name], source=int(tensors["source"][k]), target=int(tensors["target"][k]),
                    source_class=classes(int(tensors["labels"][k])),
                    target_class=classes(int(tensors["target_labels"][k])),
                    distances={d: _number(tensors[f"dist_{d}"][k]) for d in config["distances"]},
                    values={key: _number(tensors[key][k]) if key in tensors else None for key in PAIR_VALUES},
                    output=thumbnail(tensors["outputs"][k], thumb_size),
                ))
        shown = sorted({p.source for p in pairs} | {p.target for p in pairs})
        drawn = []
        if figures and result.units["traverse"][0]:
            with tempfile.TemporaryDirectory() as folder:
                drawn = [FigureData(path.name, path.read_bytes())
                         for path in plot_sweep(out_dir, folder, pairs=figure_pairs, device=device)]
        sweeps.append(SweepData(
            label=str(out_dir), config=config, created_by=manifest.get("created_by", {}), note=manifest.get("note"),
            units=result.units, conditions=[line.strip() for line in result.provenance.describe()],
            distance_titles={d: DISTANCE_TITLES[d] for d in DISTANCE_TITLES if d in config["distances"]},
            images={p: thumbnail(dataset[indices[p]][0], thumb_size) for p in shown},
            image_names={p: image_name(dataset, indices[p], p) for p in shown}, pairs=pairs, figures=drawn,
        ))
    tables = [TableData(t.title, list(t.columns), [list(r) for r in t.rows], list(t.notes)) for t in tables]
    return ReportData(tables=tables, sweeps=sweeps, thumb_size=thumb_size)


def _number(value: torch.Tensor) -> float | int | None:
    """A tensor element as a plain number: ints as they are, floats to 9 significant digits (which keeps a
    float32 exactly), None for NaN or infinity (JSON has neither)."""
    value = value.item()
    if isinstance(value, (bool, int)):
        return int(value)
    return float(f"{value:.9g}") if math.isfinite(value) else None


def thumbnail(image: torch.Tensor, size: int = THUMB_SIZE) -> str:
    """A (3, H, W) image in [0, 1] as a JPEG data URI whose longest side is at most ``size`` pixels."""
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image must have shape (3, H, W), got {tuple(image.shape)}")
    pixels = (image.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    picture = Image.fromarray(pixels)
    picture.thumbnail((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# ---------------------------------------------------------------------------------------------------------
# Rendering: plain data -> HTML


def render_html(report: ReportData, *, page_size: int = PAGE_SIZE) -> str:
    """The report as one self-contained HTML page (inline style and script, images as data URIs)."""
    _check_count("page_size", page_size)
    labels = ", ".join(s.label for s in report.sweeps)
    body = [
        "<header>", f"<h1>LST sweep report</h1><p>{_e(labels)} &middot; lst_fast {_e(lst_fast.__version__)}</p>",
        "</header>",
        '<section id="tables"><h2>Tables</h2>', *(_table_html(t, n) for n, t in enumerate(report.tables, 1)),
        "</section>",
    ]
    body += [_sweep_html(s, n, page_size) for n, s in enumerate(report.sweeps)]
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f"<title>LST report: {_e(labels)}</title>",
        f"<style>:root{{--thumb:{int(report.thumb_size)}px}}{STYLE}</style>", "</head>", "<body>", *body,
        f"<script>{SCRIPT}</script>", "</body>", "</html>", "",
    ])


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _table_html(table: TableData, number: int) -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in table.columns)
    rows = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in table.rows)
    notes = "".join(f"<li>{_e(n)}</li>" for n in table.notes)
    return (f'<figure class="table" data-table="{number}"><figcaption>{_e(table.title)}</figcaption>'
            f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table><ul class=\"notes\">{notes}</ul>"
            "</figure>")


def _sweep_html(sweep: SweepData, index: int, page_size: int) -> str:
    c = sweep.config
    summary = (f"{c.get('model')} on {c.get('data')}: {len(sweep.pairs)} valid pairs shown; "
               f"{c.get('rounds')} rounds, {c.get('iters')} iterations, schedule {c.get('schedule', 'paper')}, "
               f"seed {c.get('seed')}")
    config_rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(_text(v))}</td></tr>" for k, v in c.items())
    made = "".join(f"<tr><th>{_e(k)}</th><td>{_e(_text(v))}</td></tr>" for k, v in sweep.created_by.items())
    units = ", ".join(f"{kind} {a}/{b}" for kind, (a, b) in sweep.units.items())
    conditions = "".join(f"<li>{_e(line)}</li>" for line in sweep.conditions)
    note = f"<p class=\"note\">{_e(sweep.note)}</p>" if sweep.note else ""
    figures = "".join(
        f'<figure class="plot"><img alt="{_e(f.name)}" src="data:image/png;base64,'
        f'{base64.b64encode(f.png).decode("ascii")}"><figcaption>{_e(f.name)}</figcaption></figure>'
        for f in sweep.figures
    )
    figures = f"<h3>Figures</h3><div class=\"plots\">{figures}</div>" if figures else ""
    return "\n".join([
        f'<section class="sweep" id="sweep-{index}"><h2>{_e(sweep.label)}</h2><p>{_e(summary)}</p>{note}',
        f"<details><summary>Configuration</summary><table class=\"kv\">{config_rows}</table></details>",
        (f"<details><summary>Provenance (finished units: {_e(units)})</summary><table class=\"kv\">{made}</table>"
         f"<ul>{conditions}</ul></details>"),
        figures,
        _gallery_html(sweep, index, page_size),
        "</section>",
    ])


def _text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _gallery_html(sweep: SweepData, index: int, page_size: int) -> str:
    recorded = {k: t for k, t in PAIR_VALUES.items() if any(p.values[k] is not None for p in sweep.pairs)}
    keys = [["order", "sweep order"]] + [[k, t] for k, t in (sweep.distance_titles | recorded).items()]
    blob = {
        "page_size": page_size, "keys": keys, "distances": sweep.distance_titles, "values": recorded,
        "images": {str(p): uri for p, uri in sweep.images.items()},
        "names": {str(p): name for p, name in sweep.image_names.items()},
        "pairs": [
            {"id": p.id, "round": p.round, "source": p.source, "target": p.target, "source_class": p.source_class,
             "target_class": p.target_class, "dist": p.distances,
             **{k: v for k, v in p.values.items() if v is not None}, "output": p.output}
            for p in sweep.pairs
        ],
    }
    return (f'<section class="gallery" id="gallery-{index}" data-pairs="{len(sweep.pairs)}"><h3>Gallery</h3>'
            '<div class="controls"><label>sort by <select class="sort"></select></label>'
            '<label><select class="order"><option value="asc">ascending</option>'
            '<option value="desc">descending</option></select></label>'
            '<label>source class <select class="class"></select></label>'
            '<button type="button" class="prev">&larr; previous</button><span class="info"></span>'
            '<button type="button" class="next">next &rarr;</button></div><div class="grid"></div>'
            f'<script type="application/json" class="pair-data">{_json_for_script(blob)}</script></section>')


def _json_for_script(content) -> str:
    """JSON that cannot end its <script> element early (``<``, ``>``, ``&`` as unicode escapes)."""
    text = json.dumps(content, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fff}
h1{margin:0}header p{color:#555;margin:.2em 0 1em}
table{border-collapse:collapse;margin:.3em 0}td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}
figure.table td{white-space:nowrap}figure.table{margin:0 0 1em;overflow-x:auto}figure.table table{font-size:13px}
figure.table figcaption{font-weight:bold}ul.notes{color:#555;font-size:12px;margin:.2em 0}
table.kv th{background:#f4f4f4;font-weight:normal}section.sweep{border-top:2px solid #888;margin-top:1.5em}
.note{color:#a50}.plots{display:flex;flex-wrap:wrap;gap:8px}figure.plot{margin:0}
figure.plot img{width:270px;border:1px solid #ddd}figure.plot figcaption{font-size:12px;color:#555}
.controls{display:flex;flex-wrap:wrap;gap:10px;align-items:center;margin:.4em 0}
.grid{display:grid;grid-template-columns:repeat(auto-fill,max(300px,calc(3*var(--thumb) + 18px)));gap:8px}
figure.pair{margin:0;padding:4px;border:1px solid #ddd;border-radius:4px;background:#fafafa}
.thumbs{display:flex;gap:3px}.thumbs img{width:var(--thumb);height:var(--thumb);object-fit:contain;background:#eee;
image-rendering:pixelated}figure.pair figcaption{font-size:12px}.muted{color:#666}
.labels{display:flex;gap:3px;font-size:11px;color:#666}.labels span{width:var(--thumb);text-align:center}
"""

# Builds each gallery's current page from its JSON blob; the state (sort key, order, source class, page, page
# size) lives in the URL fragment, which the controls write and every change of it re-renders.
SCRIPT = r"""
(function () {
  "use strict";
  function state() { return new URLSearchParams(location.hash.slice(1)); }
  function update(changes) {
    var p = state();
    Object.keys(changes).forEach(function (k) { p.set(k, changes[k]); });
    location.hash = p.toString();
  }
  function fmt(v) { return v === undefined || v === null ? "n/a" : Number.isInteger(v) ? String(v) : v.toFixed(4); }
  function option(select, value, text) {
    var o = document.createElement("option"); o.value = value; o.textContent = text; select.appendChild(o);
  }
  function line(parent, text, cls) {
    var d = document.createElement("div"); d.textContent = text; if (cls) d.className = cls; parent.appendChild(d);
  }
  function setup(section) {
    var data = JSON.parse(section.querySelector("script.pair-data").textContent);
    var pick = function (c) { return section.querySelector(c); };
    var sort = pick("select.sort"), order = pick("select.order"), cls = pick("select.class");
    var grid = pick(".grid"), info = pick(".info"), prev = pick("button.prev"), next = pick("button.next");
    var keys = data.keys.map(function (k) { return k[0]; });
    data.keys.forEach(function (k) { option(sort, k[0], k[1]); });
    data.pairs.forEach(function (p, i) { p.order = i; });
    var counts = {};
    data.pairs.forEach(function (p) { counts[p.source_class] = (counts[p.source_class] || 0) + 1; });
    option(cls, "", "all (" + data.pairs.length + ")");
    Object.keys(counts).sort().forEach(function (c) { option(cls, c, c + " (" + counts[c] + ")"); });
    function value(p, key) { var v = key in data.distances ? p.dist[key] : p[key]; return v === undefined ? null : v; }
    function element(p) {
      var fig = document.createElement("figure"); fig.className = "pair"; fig.dataset.pair = p.id;
      var row = document.createElement("div"); row.className = "thumbs";
      [[data.images[p.source], "source " + data.names[p.source]], [data.images[p.target], "target " +
        data.names[p.target]], [p.output, "LST output"]].forEach(function (t) {
        var img = document.createElement("img"); img.src = t[0]; img.alt = t[1]; img.title = t[1]; row.appendChild(img);
      });
      fig.appendChild(row);
      var labels = document.createElement("div"); labels.className = "labels";
      ["source", "target", "LST output"].forEach(function (t) {
        var span = document.createElement("span"); span.textContent = t; labels.appendChild(span);
      });
      fig.appendChild(labels);
      var cap = document.createElement("figcaption");
      line(cap, p.source_class + " \u2192 " + p.target_class);
      line(cap, "round " + p.round + ": " + data.names[p.source] + " \u2192 " + data.names[p.target], "muted");
      line(cap, "confidence " + fmt(p.init_conf) + " \u2192 " + fmt(p.final_conf));
      line(cap, Object.keys(data.distances).map(function (k) { return data.distances[k] + " " + fmt(p.dist[k]); })
        .join(" \u00b7 "));
      var more = ["accepted", "evaluations", "final_step_size"].filter(function (k) { return k in data.values; });
      if (more.length) line(cap, more.map(function (k) { return data.values[k] + " " + fmt(p[k]); }).join(" \u00b7 "));
      fig.appendChild(cap);
      return fig;
    }
    function render() {
      var s = state();
      var key = keys.indexOf(s.get("sort")) >= 0 ? s.get("sort") : "order";
      var desc = s.get("order") === "desc", only = s.get("class") || "";
      var per = parseInt(s.get("per"), 10); if (!(per >= 0)) per = data.page_size;
      var list = data.pairs.filter(function (p) { return !only || p.source_class === only; });
      list.sort(function (a, b) {
        var x = value(a, key), y = value(b, key);
        if (x === y) return a.order - b.order;
        if (x === null) return 1;
        if (y === null) return -1;
        return (x < y ? -1 : 1) * (desc ? -1 : 1);
      });
      var pages = per ? Math.max(1, Math.ceil(list.length / per)) : 1;
      var page = Math.min(Math.max(parseInt(s.get("page"), 10) || 1, 1), pages);
      var shown = per ? list.slice((page - 1) * per, page * per) : list;
      grid.replaceChildren.apply(grid, shown.map(element));
      sort.value = key; order.value = desc ? "desc" : "asc"; cls.value = only;
      prev.disabled = page <= 1; next.disabled = page >= pages;
      section.dataset.matching = list.length; section.dataset.page = page; section.dataset.pages = pages;
      info.textContent = list.length ? "pairs " + ((page - 1) * (per || list.length) + 1) + "\u2013" +
        ((page - 1) * (per || list.length) + shown.length) + " of " + list.length + " (page " + page + " of " +
        pages + ")" : "no pairs";
      next.onclick = function () { update({page: page + 1}); };
      prev.onclick = function () { update({page: page - 1}); };
    }
    sort.onchange = function () { update({sort: sort.value, page: 1}); };
    order.onchange = function () { update({order: order.value, page: 1}); };
    cls.onchange = function () { update({"class": cls.value, page: 1}); };
    window.addEventListener("hashchange", render);
    render();
  }
  document.querySelectorAll("section.gallery").forEach(setup);
})();
"""

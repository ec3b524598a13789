"""``gantui report``: a run or a sweep as ``report.md`` and a self-contained ``report.html``.

A run's report holds its curves (every live change marked), the preview grids over time,
final and best samples, linear and spherical interpolations, a row per class for conditional
runs, the config, the journal and the quality summary. A sweep's report puts its runs' curves
on shared axes, tabulates them and shows one final grid per run.

The PNGs are written beside the two files; ``report.md`` links them and ``report.html``
embeds them as ``data:`` URIs, with no external CSS or JavaScript, so it can be mailed alone.
Everything read from the run directory may be torn or hostile: it is read with the tolerant
readers of :mod:`gantui.files` and escaped for Markdown and HTML.
"""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gantui.config import POINT_SETS
from gantui.errors import GantuiError
from gantui.files import as_float, as_int, read_json_dict, read_jsonl, read_toml_dict
from gantui.quality.describe import (
    DESCRIPTIONS,
    STRIP_NAME,
    format_value,
    is_class_share,
    shares_of,
)
from gantui.run.follow import sample_files
from gantui.studies import figures
from gantui.studies.compare import RunCurves, load_runs
from gantui.studies.summary import check_run_dir, read_sweep, summarise
from gantui.text import safe, value_text

REPORT_DIR = "report"
"""Default output folder inside a run or sweep directory."""
JOURNAL_EVENTS = ("set", "checkpoint", "alert", "state")
"""Journal records shown in a run's report."""
MAX_ROWS = 400
"""Longest table (the journal keeps its newest rows); the rest are counted, not shown."""
SEED = 0
"""Seed for the latents of every rendered sample, so final and best grids compare."""


def report(path: Path, out_dir: Path | None = None) -> Path:
    """``gantui report RUN|SWEEP_DIR``: :func:`report_sweep` for a directory holding
    ``sweep.json``, else :func:`report_run`.

    Returns:
        The path of ``report.html`` (``report.md`` and the PNGs lie beside it).
    """
    if (path / "sweep.json").is_file():
        return report_sweep(path, out_dir)
    return report_run(path, out_dir)


def report_run(run_dir: Path, out_dir: Path | None = None) -> Path:
    """Write a run's report to ``out_dir`` (default ``RUN_DIR/report/``).

    Args:
        run_dir: a run directory (live or finished).
        out_dir: where ``report.md``, ``report.html`` and the PNGs go; created if needed.

    Returns:
        The path of ``report.html``.

    Raises:
        GantuiError: not a run directory, no metrics yet, an unreadable file, or the report
            cannot be written; one line each.
    """
    check_run_dir(run_dir)
    (run,) = load_runs([run_dir])
    if not run.records:
        raise GantuiError(f"{safe(run_dir)}: no metrics yet: nothing to report")
    out_dir = _make_dir(out_dir or run_dir / REPORT_DIR)  # fail before the work
    cfg = read_toml_dict(run_dir / "config.toml")
    journal = read_jsonl(run_dir / "events.jsonl")
    changes = figures.live_changes(journal)
    info = read_json_dict(run_dir / "run.json")

    doc = Document(f"gantui report · {run.name}")
    start = next((r for r in reversed(journal) if r.get("event") == "start"), {})
    step = as_int(run.records[-1].get("step"))
    total = as_int(cfg.get("steps"))
    doc.facts([("run", run.name), ("preset", run.preset),
               ("device", info.get("device") or start.get("device") or "?"),
               ("steps", f"{step:,}" + (f" of {total:,}" if total else "")),
               ("state", _last_state(journal)),
               ("dataset", cfg.get("dataset", "?")), ("arch", cfg.get("arch", "?"))])

    doc.heading("Training curves")
    if changes:
        doc.paragraph(f"{len(changes)} live change(s), drawn as dashed red lines: "
                      + "; ".join(f"{c.label} at step {c.step}" for c in changes[:20])
                      + (" …" if len(changes) > 20 else ""))
    smoothing = 0.6 if len(run.records) >= 200 else 0.0
    captions = {"losses": "Losses (loss_d, loss_g)",
                "d_outputs": "D(x) and D(G(z)) (d_real, d_fake, d_fake_g)",
                "grad_norms": "Gradient norms (grad_g, grad_d), log scale",
                "quality": "Quality over time (the primary metric; the star is the best)"}
    for kind, drawn in figures.run_figures(run, changes, smoothing).items():
        doc.image(f"{kind}.png", drawn.png, captions[kind])

    doc.heading("Samples")
    strip = figures.sample_strip(run_dir)
    if strip is not None:
        doc.image("samples.png", strip.png, "Preview grids over training (samples/)")
    else:
        doc.paragraph("No preview grids in samples/ yet.")
    _generator_sections(doc, run_dir)

    doc.heading("Quality")
    _quality_section(doc, run)
    _diagnostics_section(doc, run, run_dir)
    doc.heading("Journal")
    _journal_section(doc, journal)
    doc.heading("Config")
    rows = _flatten(cfg)
    doc.table(["key", "value"], rows[:MAX_ROWS], more=len(rows) - MAX_ROWS,
              note="config.toml (the resolved config at the start; live changes are in the "
                   "journal)")
    return doc.write(out_dir)


def report_sweep(sweep_dir: Path, out_dir: Path | None = None) -> Path:
    """Write a sweep's report to ``out_dir`` (default ``SWEEP_DIR/report/``): its runs' curves
    on shared axes, the sweep's table (:func:`gantui.studies.summary.summarise`: absent runs
    read ``missing``) and one final grid per run labelled with its params.

    Returns:
        The path of ``report.html``.

    Raises:
        GantuiError: no readable ``sweep.json``, one listing no runs, or the report cannot be
            written.
    """
    spec = read_sweep(sweep_dir)
    table = summarise(sweep_dir, spec.runs, spec.vary)
    present = [r for r in table.runs if r.curves is not None]
    out_dir = _make_dir(out_dir or sweep_dir / REPORT_DIR)

    doc = Document(f"gantui sweep report · {safe(spec.name, 80)}")
    doc.facts([("sweep", spec.name), ("preset", spec.preset),
               ("varied", "; ".join(f"{k} = {', '.join(map(_text, v))}"
                                    for k, v in spec.vary.items()) or "-"),
               ("seeds", ", ".join(map(_text, spec.seeds)) or "-"),
               ("fixed", " ".join(map(_text, spec.sets)) or "-"),
               ("runs", f"{len(present)} with metrics of {len(table.runs)}")])

    doc.heading("Curves")
    curves = [r.curves for r in present]
    if curves:
        primary = figures.primary_metric(curves)
        for metric in ("loss_g", "loss_d", *([primary] if primary else [])):
            quality = metric == primary
            drawn = figures.compare_figure(curves, metric, 0.0 if quality else 0.6)
            about = f" ({DESCRIPTIONS[metric]})" if metric in DESCRIPTIONS else ""
            doc.image(f"sweep-{metric}.png", drawn.png,
                      f"{metric}{about} of every run" + ("" if quality else ", EMA 0.6"))
    else:
        doc.paragraph("No run of this sweep has metrics yet.")

    doc.heading("Runs")
    doc.table(table.columns, table.rows[:MAX_ROWS], more=len(table.rows) - MAX_ROWS,
              note="the table of the sweep's summary.md and summary.csv, read from the run "
                   "directories now")

    doc.heading("Final samples")
    panels = []
    for result in present:
        image = _final_image(result.run_dir)
        if image is not None:
            params = ", ".join(f"{k}={_text(v)}" for k, v in result.params.items())
            panels.append((params or result.name, image))
    if panels:
        drawn = figures.panels_figure(panels, "final samples, one run each")
        doc.image("sweep-final.png", drawn.png, "Final samples of each run (seed 0), labelled "
                                                "with its params")
    else:
        doc.paragraph("No run has a checkpoint or preview grid yet.")
    return doc.write(out_dir)


# ---- the document ------------------------------------------------------------------------


@dataclass
class Document:
    """A report being built: headings, paragraphs, images and tables, rendered both as
    Markdown (images linked) and as HTML (images embedded)."""

    title: str
    blocks: list[tuple] = field(default_factory=list)
    images: dict[str, bytes] = field(default_factory=dict)

    def heading(self, text: str) -> None:
        """A section heading."""
        self.blocks.append(("h2", text))

    def paragraph(self, text: str) -> None:
        """A paragraph of plain text."""
        self.blocks.append(("p", text))

    def facts(self, pairs: list[tuple[str, Any]]) -> None:
        """``name: value`` pairs on one line under the title."""
        self.blocks.append(("facts", [(k, _text(v)) for k, v in pairs]))

    def image(self, name: str, png: bytes, caption: str) -> None:
        """A PNG written as ``name`` beside the report."""
        self.images[name] = png
        self.blocks.append(("img", name, caption))

    def table(self, headers: list[str], rows: list[list[Any]], more: int = 0,
              note: str = "") -> None:
        """A table of plain values; ``more`` rows left out are counted under it."""
        self.blocks.append(("table", [_text(h) for h in headers],
                            [[_text(c) for c in row] for row in rows], max(0, more), note))

    def markdown(self) -> str:
        """The report as Markdown, images linked by file name."""
        out = [f"# {md(self.title)}", ""]
        for block in self.blocks:
            kind = block[0]
            if kind == "h2":
                out += [f"## {md(block[1])}", ""]
            elif kind == "p":
                out += [md(block[1]), ""]
            elif kind == "facts":
                out += [" · ".join(f"**{md(k)}** {md(v)}" for k, v in block[1]), ""]
            elif kind == "img":
                out += [f"![{md(block[2])}]({block[1]})", "", f"*{md(block[2])}*", ""]
            elif kind == "table":
                _, headers, rows, more, note = block
                if note:
                    out += [f"*{md(note)}*", ""]
                if not rows:
                    out += ["(none)", ""]
                    continue
                out.append("| " + " | ".join(md(h) for h in headers) + " |")
                out.append("|" + " --- |" * len(headers))
                out += ["| " + " | ".join(md(c) for c in row) + " |" for row in rows]
                out += (["", f"… and {more} more row(s)"] if more else []) + [""]
        return "\n".join(out)

    def html(self) -> str:
        """The report as one self-contained HTML page (PNGs as ``data:`` URIs, inline CSS,
        no scripts)."""
        body = [f"<h1>{esc(self.title)}</h1>"]
        for block in self.blocks:
            kind = block[0]
            if kind == "h2":
                body.append(f"<h2>{esc(block[1])}</h2>")
            elif kind == "p":
                body.append(f"<p>{esc(block[1])}</p>")
            elif kind == "facts":
                body.append('<p class="facts">' + " · ".join(
                    f"<b>{esc(k)}</b> {esc(v)}" for k, v in block[1]) + "</p>")
            elif kind == "img":
                data = base64.b64encode(self.images[block[1]]).decode("ascii")
                body.append(f'<figure><img src="data:image/png;base64,{data}" '
                            f'alt="{esc(block[2])}"><figcaption>{esc(block[2])}'
                            f"</figcaption></figure>")
            elif kind == "table":
                _, headers, rows, more, note = block
                if note:
                    body.append(f'<p class="note">{esc(note)}</p>')
                if not rows:
                    body.append("<p>(none)</p>")
                    continue
                head = "".join(f"<th>{esc(h)}</th>" for h in headers)
                cells = "\n".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row)
                                  + "</tr>" for row in rows)
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>\n{cells}\n"
                            f"</tbody></table>")
                if more:
                    body.append(f'<p class="note">… and {more} more row(s)</p>')
        return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
                f"<title>{esc(self.title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
                + "\n".join(body) + "\n</body>\n</html>\n")

    def write(self, out_dir: Path) -> Path:
        """Write the PNGs, ``report.md`` and ``report.html`` into ``out_dir``.

        Returns:
            The path of ``report.html``.

        Raises:
            GantuiError: ``out_dir`` cannot be created or written.
        """
        _make_dir(out_dir)
        for name, png in self.images.items():
            figures.save_bytes(out_dir / name, png)
        figures.save_bytes(out_dir / "report.md", self.markdown().encode())
        return figures.save_bytes(out_dir / "report.html", self.html().encode())


def _make_dir(out_dir: Path) -> Path:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GantuiError(f"cannot create {safe(out_dir)}: {exc.strerror or exc}") from None
    return out_dir


_CSS = ("body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;"
        "color:#222}h1{font-size:1.5em}h2{border-bottom:1px solid #ddd;margin-top:1.6em}"
        "figure{margin:1em 0}img{max-width:100%;image-rendering:pixelated}"
        "figcaption,.note{color:#666;font-size:.9em}table{border-collapse:collapse;"
        "font-size:.85em}td,th{border:1px solid #ddd;padding:2px 8px;text-align:left;"
        "vertical-align:top}th{background:#f4f4f4}.facts b{color:#555}")

_MD_SPECIAL = {c: "\\" + c for c in "\\`*_[]|#~$"}  # $: some renderers do TeX
_MD_SPECIAL.update({"<": "&lt;", ">": "&gt;", "&": "&amp;"})


def md(text: Any) -> str:
    """Text from a file as inert Markdown: one printable line, markup characters escaped."""
    return "".join(_MD_SPECIAL.get(c, c) for c in safe(text))


def esc(text: Any) -> str:
    """Text from a file as inert HTML: one printable line, ``<>&"'`` escaped."""
    return html.escape(safe(text), quote=True)


# ---- a run's sections --------------------------------------------------------------------


def _last_state(journal: list[dict]) -> str:
    for record in reversed(journal):
        if record.get("event") == "state" and isinstance(record.get("state"), str):
            return safe(record["state"], 30)
    return "unknown"


def _generator_sections(doc: Document, run_dir: Path) -> None:
    """Final and best samples, interpolations and the class grid, from the checkpoints."""
    from gantui.studies import sampling

    try:
        generator, cfg, step = sampling.load_generator(run_dir)
    except _LOAD_ERRORS as exc:
        doc.paragraph(f"No samples drawn from a checkpoint: {_reason(exc)}")
        return
    ring = cfg.dataset in POINT_SETS
    what = "scatter of 512 samples over the mixture's modes" if ring else "64 samples"
    doc.image("final.png", _png(_grid(generator, cfg)),
              f"Final: newest checkpoint, step {step:,} ({what}, seed {SEED})")
    best_path = run_dir / "checkpoints" / "best.pt"
    if best_path.is_file():
        try:
            best_g, best_cfg, best_step = sampling.load_generator(run_dir, best=True)
        except _LOAD_ERRORS as exc:
            doc.paragraph(f"The best checkpoint cannot be used: {_reason(exc)}")
        else:
            doc.image("best.png", _png(_grid(best_g, best_cfg)),
                      f"Best by the quality metric: checkpoints/best.pt, step {best_step:,} "
                      f"(the same latents)")
    else:
        doc.paragraph("No best checkpoint (checkpoints/best.pt is written when a quality "
                      "evaluation improves; see eval_every).")

    rows, steps = (8, 24) if ring else (6, 10)
    for spherical, name, words in ((False, "interp-linear.png", "linear"),
                                   (True, "interp-slerp.png", "spherical (slerp)")):
        z, labels = sampling.interpolation(cfg, rows, steps, SEED, spherical=spherical)
        image = sampling.render(generator, cfg, z, labels, steps)
        doc.image(name, _png(image), f"Interpolation, {words}: {rows} rows of {steps} steps "
                  f"from z2 to z1, step {step:,}" + (" (a row per class)" if cfg.conditional
                                                     else ""))
    if cfg.conditional:
        z, labels = sampling.class_by_z(cfg, 8, SEED)
        doc.image("classes.png", _png(sampling.render(generator, cfg, z, labels, 8)),
                  f"Class grid: a row per class (0 to {cfg.n_classes - 1}), a column per z, "
                  f"step {step:,}")


def _grid(generator, cfg):
    from gantui.studies import sampling

    return sampling.sample_grid(generator, cfg, 512 if cfg.dataset in POINT_SETS else 64, SEED)


def _png(image) -> bytes:
    """A (C, H, W) tensor in [0, 1] as PNG bytes, small images enlarged (nearest) to about
    500 pixels so single digits stay visible."""
    from PIL import Image

    array = image.mul(255).round().clamp(0, 255).byte().permute(1, 2, 0).cpu().numpy()
    picture = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
    scale = max(1, min(4, 500 // max(picture.size)))
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale),
                                 Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def _quality_section(doc: Document, run: RunCurves) -> None:
    from gantui.quality.evaluate import HIGHER_IS_BETTER

    if not run.quality:
        doc.paragraph("No quality evaluations (eval_every = 0, or none due yet).")
        return
    last = run.quality[-1]
    primary = last.get("primary")
    rows = []
    names = [k for k in last if k not in ("step", "primary", "best_value", "best_step")
             and not is_class_share(k)]  # the class heat strip shows those
    for name in names:
        latest = as_float(last.get(name))
        if latest is None or not math.isfinite(latest):
            continue
        history = [(as_int(r.get("step")), as_float(r.get(name))) for r in run.quality]
        history = [(s, v) for s, v in history if v is not None and math.isfinite(v)]
        if name == primary and as_float(last.get("best_value")) is not None:
            best_value = format_value(name, as_float(last["best_value"]))
            best = f"{best_value} @{as_int(last.get('best_step'))}"
        elif name in HIGHER_IS_BETTER and history:
            pick = max if HIGHER_IS_BETTER[name] else min
            step, value = pick(history, key=lambda sv: sv[1])
            best = f"{format_value(name, value)} @{step}"
        else:
            best = "-"
        rows.append([name + (" *" if name == primary else ""), format_value(name, latest), best,
                     DESCRIPTIONS.get(name, "")])
    doc.table(["value", f"latest (step {as_int(last.get('step'))})", "best (step)",
               "what it measures"], rows[:MAX_ROWS], more=len(rows) - MAX_ROWS,
              note=f"{len(run.quality)} evaluation(s); * marks the primary metric, whose best "
                   f"is the one kept in checkpoints/best.pt")


def _diagnostics_section(doc: Document, run: RunCurves, run_dir: Path) -> None:
    """Why, where the evaluations measured it: D overfitting, near-copies, class shares."""
    rows = []
    for record in run.quality:
        r_t, train, held = (as_float(record.get(k)) for k in ("r_t", "d_acc_train",
                                                               "d_acc_held"))
        copies = as_float(record.get("near_copies"))
        legible, legible_real = as_float(record.get("legible")), as_float(
            record.get("legible_real"))
        if r_t is None and train is None and copies is None and legible is None:
            continue
        gap = train - held if train is not None and held is not None else None
        read = "-" if legible is None else format_value("legible", legible) + (
            "" if legible_real is None else f" ({format_value('legible_real', legible_real)})")
        rows.append([f"{as_int(record.get('step')):,}",
                     "-" if r_t is None else format_value("r_t", r_t),
                     "-" if train is None else format_value("d_acc_train", train),
                     "-" if held is None else format_value("d_acc_held", held),
                     "-" if gap is None else f"{gap:+.1%}",
                     "-" if copies is None else format_value("near_copies", copies), read])
    history = [(as_int(r.get("step")), shares_of(r)) for r in run.quality]
    history = [(step, shares) for step, shares in history if shares and all(
        isinstance(v, (int, float)) and math.isfinite(v) for v in shares)]
    strip = run_dir / "samples" / STRIP_NAME
    if not rows and not history:
        return
    doc.heading("Diagnostics")
    if rows:
        doc.table(["step", "r_t", "D: train real", "D: held-out real", "gap", "near-copies",
                   "legible (real)"],
                  rows[-MAX_ROWS:], more=max(0, len(rows) - MAX_ROWS),
                  note="r_t = E[sign D(x)] over the training batches since the evaluation "
                       "before (ADA's heuristic; near +1: D is sure of every training image). "
                       "A lasting gap between D's accuracy on training and held-out real "
                       "images means D overfits: augmentation, R1, instance noise or a lower "
                       "lr_d help. Near-copies: samples closer to a training image than any "
                       "held-out real image is. Legible: samples the judge reads with at least "
                       "90% confidence, against held-out real images; far below it, G draws "
                       "many samples nobody could name")
    try:
        png = strip.read_bytes() if strip.is_file() else None
    except OSError:
        png = None
    if png is not None:
        doc.image("near-copies.png", png, "The latest evaluation's samples closest to a "
                  "training image (top) over that training image (bottom)")
    if history:
        doc.image("class-shares.png", _class_heat_png(history),
                  f"Share of samples per class (rows 0-{len(history[-1][1]) - 1}, top to "
                  f"bottom) at each evaluation (left to right, steps {history[0][0]:,} to "
                  f"{history[-1][0]:,}); bright = common, black = absent")


def _class_heat_png(history: list[tuple[int, list[float]]], cell: int = 12) -> bytes:
    """The class heat strip as a PNG: a row per class, a column per evaluation."""
    import numpy as np
    from PIL import Image

    n = max(len(shares) for _, shares in history)
    grid = np.zeros((n, len(history)), dtype=np.float64)
    for col, (_, shares) in enumerate(history):
        grid[:len(shares), col] = shares
    level = np.clip(grid * n / 2, 0, 1)  # full brightness at twice the even share
    level = np.where(grid > 0, 0.15 + 0.85 * level, 0.0)
    rgb = np.stack([level * 255, level * 190, level * 60], axis=-1).round().astype(np.uint8)
    rgb = rgb.repeat(cell, axis=0).repeat(cell, axis=1)
    out = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(out, format="PNG")
    return out.getvalue()


def _journal_section(doc: Document, journal: list[dict]) -> None:
    rows = []
    for record in journal:
        kind = record.get("event")
        if kind not in JOURNAL_EVENTS:
            continue
        step = as_int(record.get("step"))
        if kind == "set":
            detail = (f"{_text(record.get('key'))} {_text(record.get('old'))}→"
                      f"{_text(record.get('new'))}")
        elif kind == "checkpoint":
            detail = f"{_text(record.get('reason'))}: {Path(_text(record.get('path'))).name}"
        elif kind == "alert":
            detail = f"{_text(record.get('kind'))}: {_text(record.get('message'))}"
        else:
            message = record.get("message")
            detail = _text(record.get("state")) + (f": {_text(message)}" if message else "")
        rows.append(["-" if step is None else step, kind, safe(detail, 300)])
    shown = rows[-MAX_ROWS:]
    doc.table(["step", "event", "detail"], shown,
              note="events.jsonl: live changes, checkpoints, alerts and state changes"
                   + (f" (the newest {len(shown)} of {len(rows)})" if len(rows) > len(shown)
                      else ""))


def _flatten(data: dict, prefix: str = "", depth: int = 0) -> list[list[str]]:
    """``[dotted key, value]`` rows of a config (nested tables as ``a.b``, at most 8 deep)."""
    rows = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and depth < 8:
            rows += _flatten(value, f"{name}.", depth + 1)
        else:
            rows.append([safe(name, 120), _text(value)])
    return rows


# ---- a sweep's pieces --------------------------------------------------------------------


def _final_image(run_dir: Path):
    """A run's final samples: drawn from its newest checkpoint, else its last preview grid."""
    import numpy as np

    from gantui.studies import sampling

    try:
        generator, cfg, _ = sampling.load_generator(run_dir)
    except _LOAD_ERRORS:
        files = sample_files(run_dir)
        return figures.read_image(files[-1][1]) if files else None
    if cfg.dataset not in POINT_SETS:
        labels, nrow = sampling.class_rows(cfg, 16 if not cfg.conditional else cfg.n_classes)
        z = sampling.latents(cfg, 16 if labels is None else len(labels), SEED)
        image = sampling.render(generator, cfg, z, labels, nrow)
    else:
        image = _grid(generator, cfg)
    array = image.permute(1, 2, 0).clamp(0, 1).cpu().numpy()
    return np.ascontiguousarray(array[:, :, 0] if array.shape[2] == 1 else array)


# ---- small helpers -----------------------------------------------------------------------


_LOAD_ERRORS = (GantuiError, RuntimeError, ValueError, KeyError, TypeError, OSError)
"""What loading a damaged or foreign checkpoint may raise (StoreError is a GantuiError)."""


def _reason(exc: BaseException) -> str:
    return safe(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, 200)


def _text(value: Any) -> str:
    """A plain value from a file as short printable text (a list's items joined by commas;
    anything nested shown as ``[…]`` or ``{…}``, so hostile nesting costs nothing)."""
    if isinstance(value, (list, tuple)):
        items = [value_text(v) for v in list(value)[:50]]
        return safe(", ".join(items) + (", …" if len(value) > 50 else ""), 300)
    return safe(value_text(value), 300)

"""One self-contained HTML study report: figures embedded as base64 PNG, tables as HTML, no external
resources (no scripts, fonts or links to fetch), so the single file can be mailed or archived.

:func:`render_report` takes a summary and a list of :class:`Section`; each section holds items that are
matplotlib Figures, PNG files, DataFrames or plain text. :mod:`rvi.stages.evaluate` assembles the
sections of a study from the stages' outputs.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

_STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 1.5em auto; max-width: 1200px;
       color: #222; line-height: 1.4; padding: 0 1em; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.8em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.6em 0; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; height: auto; display: block; margin: 0.6em 0; }
.summary { display: grid; grid-template-columns: repeat(auto-fill, minmax(230px, 1fr)); gap: 0.6em; }
.card { background: #f6f8fa; border: 1px solid #e1e4e8; border-radius: 6px; padding: 0.6em 0.8em; }
.card b { display: block; font-size: 1.3em; } .note { color: #8a5300; } .missing { color: #888; font-style: italic; }
nav a { margin-right: 0.9em; } .scroll { overflow-x: auto; }
"""


@dataclass
class Section:
    """A heading and its items (Figure, PNG path, DataFrame, str) in order; ``anchor`` for the menu."""

    title: str
    items: list = field(default_factory=list)
    anchor: str = ""

    def __post_init__(self):
        if not self.anchor:
            self.anchor = "".join(c if c.isalnum() else "-" for c in self.title.lower()).strip("-")


@dataclass
class Missing:
    """An expected figure or table that this run did not produce (shown as a note, never a broken image)."""

    what: str


def figure_png(fig, dpi: int = 110) -> bytes:
    """PNG bytes of a matplotlib Figure."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table(frame: pd.DataFrame, caption: str | None = None, max_rows: int = 60) -> str:
    shown = frame.head(max_rows)
    body = shown.to_html(
        float_format=lambda v: f"{v:.3g}" if np.isfinite(v) else "NaN",
        na_rep="NaN",
        border=0,
        escape=True,
        index_names=False,
    )
    more = f"<p class='missing'>{len(frame) - max_rows} more rows in the CSV</p>" if len(frame) > max_rows else ""
    cap = f"<p><b>{html.escape(caption)}</b></p>" if caption else ""
    return f"{cap}<div class='scroll'>{body}</div>{more}"


def _item(item) -> str:
    from matplotlib.figure import Figure

    if isinstance(item, Figure):
        alt = item.get_suptitle() or (item.axes[0].get_title() if item.axes else "figure")
        return _img(figure_png(item), alt or "figure")
    if isinstance(item, Missing):
        return f"<p class='missing'>not produced by this run: {html.escape(item.what)}</p>"
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], pd.DataFrame):
        return _table(item[1], caption=item[0])
    if isinstance(item, pd.DataFrame):
        return _table(item)
    if isinstance(item, Path):
        if not item.exists():
            return _item(Missing(str(item.name)))
        return _img(item.read_bytes(), item.name)
    if isinstance(item, str):
        return f"<p>{html.escape(item)}</p>"
    raise TypeError(f"report item of type {type(item).__name__} is not a Figure, Path, DataFrame or str")


def render_report(
    title: str,
    summary: Mapping[str, object],
    sections: Sequence[Section],
    notes: Sequence[str] = (),
    best: pd.DataFrame | None = None,
) -> str:
    """The report as one HTML string: title, summary cards, best embedding per family, notes, sections."""
    cards = "".join(
        f"<div class='card'>{html.escape(str(k))}<b>{html.escape(str(v))}</b></div>" for k, v in summary.items()
    )
    best_html = ""
    if best is not None and len(best):
        best_html = "<h3>Best embedding per metric family</h3>" + _table(best.set_index("family"))
    notes_html = "".join(f"<li class='note'>{html.escape(n)}</li>" for n in notes)
    nav = "".join(f"<a href='#{s.anchor}'>{html.escape(s.title)}</a>" for s in sections)
    body = "".join(
        f"<section id='{s.anchor}'><h2>{html.escape(s.title)}</h2>{''.join(_item(i) for i in s.items)}</section>"
        for s in sections
    )
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><div class='summary' id='summary'>{cards}</div>{best_html}"
        f"{'<ul>' + notes_html + '</ul>' if notes_html else ''}<nav>{nav}</nav>{body}</body></html>"
    )

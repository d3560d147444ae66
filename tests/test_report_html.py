"""The self-contained HTML report: structure, embedded figures, and a real headless browser render."""

import base64
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from rvi.evaluation import plots
from rvi.report_html import Missing, Section, render_report

BROWSER_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Run in the page after load: counts images that did not decode and the tables, written into the DOM.
CHECK_SCRIPT = """<script>
window.addEventListener('load', () => {
  const imgs = Array.from(document.images);
  document.body.setAttribute('data-check', JSON.stringify({
    images: imgs.length,
    broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length,
    tables: document.querySelectorAll('table').length,
    summary: document.querySelectorAll('#summary .card').length,
  }));
});
</script>"""


def chromium() -> str | None:
    """A Chromium/Chrome binary: RVI_CHROMIUM, else the usual names on PATH."""
    if os.environ.get("RVI_CHROMIUM"):
        return os.environ["RVI_CHROMIUM"]
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _per_cell(seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = 60
    return pd.DataFrame(
        {
            "degree": np.full(n, 5),
            "corr_same_library": rng.uniform(0.3, 1, n),
            "corr_cross_library": np.where(rng.random(n) < 0.2, np.nan, rng.uniform(0, 1, n)),
            "n_cross_library": rng.integers(0, 3, n),
            "n_target_cross_library": np.full(n, 30.0),
            "p_isolated_cross_library": np.full(n, 0.2),
            "failure_mode": rng.choice(["ideal", "noisy", "forced_merge", "not_applicable"], n),
        },
        index=[f"c{i}" for i in range(n)],
    )


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    per_cell = {"rvi_rna": _per_cell(0), "pca": _per_cell(1)}
    table = pd.DataFrame({"H1": [0.8, 0.5], "H5": [0.9, 3.0], "total": [0.7, np.nan]}, index=["rvi_rna", "pca"])
    coords = pd.DataFrame(np.random.default_rng(2).normal(size=(60, 2)), index=per_cell["pca"].index)
    png = tmp_path_factory.mktemp("figs") / "stage.png"
    fig = Figure(figsize=(2, 2))
    fig.subplots().plot([0, 1], [1, 0])
    fig.savefig(png)
    sections = [
        Section("Integration metrics", [("composite", table), plots.metric_heatmap(table)]),
        Section(
            "Figures",
            [
                plots.correlation_umaps(coords, per_cell),
                plots.isolation_bars(per_cell),
                plots.failure_composition(per_cell),
            ],
        ),
        Section("Stage figures", [png, Missing("CRE heatmap"), png.with_name("absent.png"), "plain text"]),
    ]
    best = pd.DataFrame([{"family": "label-free total", "metric": "total", "best": "rvi_rna", "value": 0.7}])
    html = render_report("rvi study report: t", {"cells kept": "60", "libraries": 2}, sections, ["a note"], best)
    path = tmp_path_factory.mktemp("report") / "report.html"
    path.write_text(html)
    return path


def test_report_is_self_contained(report):
    html = report.read_text()
    sources = re.findall(r'<img[^>]* src="([^"]+)"', html)
    assert len(sources) == 5  # heatmap, 3 evaluation figures, the stage PNG
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    # Nothing to fetch: no links to other files, no scripts, no external URLs.
    assert not re.search(r"(src|href)=['\"](?!data:|#)", html)
    assert "<script" not in html and "http" not in html
    assert html.count("<table") == 2 and "not produced by this run: CRE heatmap" in html
    assert "not produced by this run: absent.png" in html and "a note" in html


def test_report_renders_in_headless_browser(report, tmp_path):
    binary = chromium()
    if binary is None:
        pytest.skip("no Chromium/Chrome found (install chromium or set RVI_CHROMIUM) for the browser render test")
    page = tmp_path / "checked.html"
    page.write_text(report.read_text().replace("</body>", CHECK_SCRIPT + "</body>"))
    cmd = [binary, *BROWSER_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000"]
    proc = subprocess.run([*cmd, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    match = re.search(r"data-check=\"([^\"]+)\"", proc.stdout)
    assert match, f"browser produced no check result (rc {proc.returncode}): {proc.stderr[-2000:]}"
    check = json.loads(match.group(1).replace("&quot;", '"'))
    assert check == {"images": 5, "broken": 0, "tables": 2, "summary": 2}
    shot = tmp_path / "shot.png"
    subprocess.run(
        [*cmd, f"--screenshot={shot}", "--window-size=1200,900", page.as_uri()], capture_output=True, timeout=120
    )
    from matplotlib.image import imread

    pixels = imread(shot)
    assert pixels.std() > 0.01  # not a blank page

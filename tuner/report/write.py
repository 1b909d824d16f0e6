"""Writing a search's report: the PNGs and index.html in the search's folder, then the same folder as
artifacts of the search's parent MLflow run (``report/index.html``), where the team already looks."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from tuner.places import SearchPlaces
from tuner.report import figures
from tuner.report.build import Report, build_report
from tuner.report.html import render_page
from tuner.search.definition import load_definition
from tuner.spec.model import SearchSpec
from tuner.tracking.store import open_client, tracking_errors

REPORT_DIR = "report"  # the folder's name, and the artifact path in the parent run


def report_dir(name: str, places: SearchPlaces) -> Path:
    """``<search folder>/report``; beside the search's local state when its folder is remote (s3://),
    since the page is written locally first."""
    search_dir = places.search_dir(name)
    return (places.state_dir if "://" in search_dir else Path(search_dir)) / REPORT_DIR


def write_report(name: str, places: SearchPlaces, *, spec: Optional[SearchSpec] = None) -> Path:
    """Writes the report of search ``name`` and logs it to the search's parent run; returns the path
    of index.html. ``spec`` defaults to the search's saved definition."""
    if spec is None:
        _, _, spec = load_definition(name, places.storage_path)
    report = build_report(name, places, spec)
    folder = report_dir(name, places)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):  # a figure that has no data this time must not linger
        old.unlink()
    index = folder / "index.html"
    index.write_text(render_page(report, draw_figures(report, folder)), encoding="utf-8")
    with tracking_errors(places.tracking_uri):
        open_client(places.tracking_uri).log_artifacts(report.data.parent_run_id, str(folder),
                                                        REPORT_DIR)
    return index


def draw_figures(report: Report, folder: Path) -> dict[str, Path]:
    """The figures that have data to show, by section."""
    data = report.data
    scored = any(t.best is not None for t in data.trials)
    plans: dict[str, tuple[bool, Callable[[Path], Path]]] = {
        "progress": (report.reported, lambda p: figures.draw_progress(report.progress, data.metric, p)),
        "curves": (report.reported, lambda p: figures.draw_curves(data, p)),
        "parallel": (scored and bool(data.axes), lambda p: figures.draw_parallel(data, p)),
        "importance": (bool(report.importance.values),
                       lambda p: figures.draw_importance(report.importance, p)),
        "slices": (scored and bool(report.slices), lambda p: figures.draw_slices(data, report.slices, p)),
        "timeline": (bool(report.timeline.bars), lambda p: figures.draw_timeline(report.timeline, p)),
    }
    return {section: draw(folder / f"{section}.png") for section, (wanted, draw) in plans.items()
            if wanted}

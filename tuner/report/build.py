"""A search's report as data: everything the figures and the page show, before anything is drawn."""

from __future__ import annotations

from dataclasses import dataclass

from tuner.places import SearchPlaces
from tuner.report.analysis import ProgressPoint, Timeline, progress, timeline
from tuner.report.data import SearchData, gather
from tuner.report.importance import Importance, search_importance
from tuner.search.study_storage import load_search_study
from tuner.spec.model import SearchSpec

MAX_SLICES = 4  # slice plots beyond the top few params are too small to read


@dataclass
class Report:
    data: SearchData
    progress: list[ProgressPoint]
    timeline: Timeline
    importance: Importance
    slices: list[str]  # params with a slice plot, most important first

    @property
    def reported(self) -> bool:
        """Whether any trial has reported an epoch (else there is nothing to draw)."""
        return bool(self.progress)


def build_report(name: str, places: SearchPlaces, spec: SearchSpec) -> Report:
    data = gather(name, places, spec)
    importance = search_importance(load_search_study(spec, places, name), name)
    return Report(
        data=data,
        progress=progress(data.trials, data.mode),
        timeline=timeline(data.trials),
        importance=importance,
        slices=slice_params(importance, [a.name for a in data.axes]),
    )


def slice_params(importance: Importance, searched: list[str]) -> list[str]:
    """The most important params; in the spec's order when there are no importances yet."""
    ranked = [p for p in importance.values if p in searched] or searched
    return ranked[:MAX_SLICES]

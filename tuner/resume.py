"""``tuner resume NAME [--more N]``: finish a search whose driver died, or extend a finished one.

A search records how it was started (the spec's text, the CLI overrides, where its results go) in
its state folder, so resuming needs only its name. ``--more N`` runs N further trials as a new Ray
experiment inside the search's folder that continues the SAME Optuna study (every earlier trial is
history for the sampler) and the SAME MLflow parent run.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Optional

import yaml

from tuner.cluster import preflight_search
from tuner.driver import SearchPlaces, resume_search, run_search
from tuner.errors import UserError
from tuner.spec import SearchSpec, parse_spec
from tuner.workspace import search_places

DEFINITION_FILE = "search.json"


def save_definition(places: SearchPlaces, spec: SearchSpec, *, spec_text: str, start_dir: Path,
                    overrides: dict, address: Optional[str]) -> None:
    places.state_dir.mkdir(parents=True, exist_ok=True)
    definition = {
        "name": spec.name,
        "spec_text": spec_text,
        "spec_source": spec.source,
        "start_dir": str(start_dir.resolve()),
        "overrides": overrides,
        "num_samples": spec.budget.num_samples,
        "tracking_uri": places.tracking_uri,
        "storage_path": places.storage_path,
        "address": address,
        "extensions": [],
    }
    _write(places.state_dir / DEFINITION_FILE, definition)


def _write(path: Path, content: dict) -> None:
    partial = path.with_suffix(".part")
    partial.write_text(json.dumps(content, indent=1))
    os.replace(partial, path)


def load_definition(name: str, storage: Optional[str]) -> tuple[dict, SearchPlaces, SearchSpec]:
    places = search_places(name, tracking=None, storage=storage)
    path = places.state_dir / DEFINITION_FILE
    if not path.is_file():
        raise UserError(f"no search named {name!r} in {places.storage_path} (nothing to resume)")
    definition = json.loads(path.read_text())
    places = dataclasses.replace(places, tracking_uri=definition["tracking_uri"])
    # The spec is re-read from the copy taken at start: editing the YAML later changes nothing.
    cwd = Path.cwd()
    try:
        os.chdir(definition["start_dir"])  # relative data paths resolve as they did at start
        spec = parse_spec(yaml.safe_load(definition["spec_text"]), source=definition["spec_source"],
                          overrides=definition["overrides"])
    finally:
        os.chdir(cwd)
    spec = dataclasses.replace(
        spec, name=name,
        budget=dataclasses.replace(spec.budget, num_samples=definition["num_samples"]),
    )
    return definition, places, spec


def resume_from_cli(args) -> int:
    from tuner.search import make_tracking, print_summary

    definition, places, spec = load_definition(args.name, args.storage)
    address = args.address or definition.get("address")
    preflight_search(spec, places, address=address)
    if args.more is None:
        results = resume_search(spec, places, address=address)
        print_summary(spec, places, results)
        return 0
    if args.more < 1:
        raise UserError(f"--more: must be >= 1, got {args.more}")
    extension = f"more-{len(definition['extensions']) + 1}"
    definition["extensions"].append({"name": extension, "num_samples": args.more})
    _write(places.state_dir / DEFINITION_FILE, definition)
    more = dataclasses.replace(spec, budget=dataclasses.replace(spec.budget, num_samples=args.more))
    tracking = make_tracking(more, places, spec_file=None)
    results = run_search(more, places, tracking, address=address,
                         experiment=(places.search_dir(spec.name), extension))
    print_summary(more, places, results)
    return 0

"""The saved definition of a search: how it was started, so that resuming needs only its name.

A search records the spec's text, the CLI overrides, where its results go and the folders relative
paths were read from, in its state folder. ``tuner resume`` re-reads the spec from that copy:
editing the YAML later changes nothing. ``--more`` extensions are appended to the same file.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Optional

import yaml

from tuner.errors import UserError
from tuner.places import SearchPlaces, search_places
from tuner.spec.load import parse_spec
from tuner.spec.model import SearchSpec

DEFINITION_FILE = "search.json"


def save_definition(places: SearchPlaces, spec: SearchSpec, *, spec_file: Path, start_dir: Path,
                    overrides: dict, address: Optional[str]) -> None:
    places.state_dir.mkdir(parents=True, exist_ok=True)
    definition = {
        "name": spec.name,
        "spec_text": spec_file.read_text(),
        "spec_source": spec.source,
        "spec_dir": str(spec_file.resolve().parent),
        "start_dir": str(start_dir.resolve()),
        "overrides": overrides,
        "num_samples": spec.budget.num_samples,
        "tracking_uri": places.tracking_uri,
        "storage_path": places.storage_path,
        "address": address,
        "extensions": [],
    }
    write_definition(places, definition)


def write_definition(places: SearchPlaces, definition: dict) -> None:
    path = places.state_dir / DEFINITION_FILE
    partial = path.with_suffix(".part")
    partial.write_text(json.dumps(definition, indent=1))
    os.replace(partial, path)


def load_definition(name: str, storage: Optional[str]) -> tuple[dict, SearchPlaces, SearchSpec]:
    # The tracking URI placeholder is replaced by the saved one: a resumed search writes where it began.
    places = search_places(name, tracking_uri="", storage=storage)
    path = places.state_dir / DEFINITION_FILE
    if not path.is_file():
        raise UserError(f"no search named {name!r} in {places.storage_path} "
                        "(pass --storage if it was started with one)")
    definition = json.loads(path.read_text())
    places = search_places(name, tracking_uri=definition["tracking_uri"], storage=storage)
    start_dir = Path(definition["start_dir"])
    spec = parse_spec(yaml.safe_load(definition["spec_text"]), source=definition["spec_source"],
                      overrides=definition["overrides"], working_dir=start_dir,
                      base_dir=Path(definition.get("spec_dir", start_dir)))
    spec = dataclasses.replace(
        spec, name=name,
        budget=dataclasses.replace(spec.budget, num_samples=definition["num_samples"]),
    )
    return definition, places, spec

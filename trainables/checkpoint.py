"""Checkpoints: everything needed to resume a trial exactly, or to predict without the search.

The journal lost runs to missing resumes and models whose hyper-parameters were not saved with them.
A checkpoint here holds model, optimizer, schedule, epoch, RNG states, history, the TrialConfig (as a
plain dict) and class_to_idx. Only tensors, numbers, strings, lists and dicts go in, so it loads with
``torch.load(weights_only=True)``: a checkpoint that needs pickled code is refused, not executed.
"""

from __future__ import annotations

import os
import pickle
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainables.errors import TrialInputError

CHECKPOINT_FILE = "checkpoint.pt"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # torch colours its refusal message
FORMAT_VERSION = 2  # 2: RNG states as plain tensors (1 held pickled numpy state)


class CheckpointError(TrialInputError):
    """The checkpoint is missing, unreadable or unsafe; the message names the file."""


def rng_state() -> dict[str, Any]:
    """Every generator's state as tensors and plain numbers (no pickled objects)."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    version, words, python_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)),
                  "position": int(position), "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": int(version), "words": torch.tensor(words, dtype=torch.int64),
                   "gauss": python_gauss},
    }
    if torch.cuda.is_initialized():  # not is_available(): a CPU trial must not create a CUDA context
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state, python_state = state["numpy"], state["python"]
    if isinstance(numpy_state, dict):  # format 1 kept pickled bytes here: those are never unpickled
        np.random.set_state((
            numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"], numpy_state["has_gauss"], numpy_state["gauss"],
        ))
    if isinstance(python_state, dict):
        random.setstate((python_state["version"], tuple(python_state["words"].tolist()),
                         python_state["gauss"]))
    if "cuda" in state and torch.cuda.is_initialized():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])


def save_checkpoint(directory: str | Path, **content: Any) -> Path:
    """Writes ``directory/checkpoint.pt`` atomically (temporary name, then rename)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / CHECKPOINT_FILE
    partial = directory / (CHECKPOINT_FILE + ".part")
    torch.save({"format_version": FORMAT_VERSION, **content}, partial)
    os.replace(partial, target)
    return target


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Loads a checkpoint file (or the one inside a checkpoint directory) with weights_only=True."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint file")
    try:
        content = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        what = f"it references {found[1]}" if found else _ANSI.sub("", str(err).splitlines()[0])
        raise CheckpointError(
            f"{path}: refused, it needs pickled code to load (only tensors and plain data are "
            f"accepted): {what}"
        ) from None
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(f"{path}: unreadable checkpoint ({err})") from None
    if not isinstance(content, dict) or "model" not in content:
        raise CheckpointError(f"{path}: not a tuner checkpoint (no 'model' entry)")
    return content

"""Small shared helpers: params files, seeding, devices and config-keyed artifact caching."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent


def load_params(path: str | os.PathLike) -> dict:
    """Read a profile (params/mini.yaml, params/full.yaml, ...) as a plain dict."""
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(device: str | None = None) -> torch.device:
    """`device` if given; under a launcher this process's own device (each rank its GPU), else the GPU if any."""
    if device and device != "auto":
        return torch.device(device)
    state = distributed()
    if state is not None:
        return state.device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def distributed():
    """accelerate's `PartialState` when this process was started by a launcher (`accelerate launch`, torchrun) into a
    group of several, else None."""
    if int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return None
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())  # without a GPU: processes on the CPU, gloo


def is_main_process() -> bool:
    """True in a plain process and in the main process of a launched group: the one process that writes files."""
    state = distributed()
    return state is None or state.is_main_process


def wait_for_everyone() -> None:
    """A barrier across the launched processes; nothing in a plain process."""
    state = distributed()
    if state is not None:
        state.wait_for_everyone()


def config_hash(config: Any) -> str:
    """A short, stable hash of a JSON-able config: the key of a cached artifact."""
    blob = json.dumps(config, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:12]


def artifact_hash(folder: str | os.PathLike) -> str:
    """The config hash a built folder records in its artifact.json (what depends on it is keyed by this)."""
    return json.loads((Path(folder) / "artifact.json").read_text(encoding="utf-8"))["config_hash"]


def cached_artifact(out_dir: str | os.PathLike, config: dict, build: Callable[[Path], Any], force: bool = False,
                    every_process: bool = False) -> Path:
    """Build an artifact into `out_dir` unless a finished build with the same config is already there.

    `artifact.json` records the config hash when a build starts and `finished: true` when it ends, so an
    interrupted build with the same config runs again in place (its checkpoints let it resume), while a
    changed config starts from an empty folder. A lock file beside the folder makes processes that want the same
    artifact at once (`python -m koclip_lib.run --jobs 2`) wait for one build instead of racing two. Under a launcher
    the main process alone takes the lock and decides (the others wait at a barrier) and builds, while the others
    wait; with `every_process` (a model trained data-parallel) every process runs `build` and only the main one
    writes.
    """
    from filelock import FileLock

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    main = is_main_process()
    lock = FileLock(out_dir.parent / f".{out_dir.name}.lock")  # an OS lock: released if this process dies
    with lock if main else contextlib.nullcontext():
        wait_for_everyone()
        return _cached_artifact(out_dir, config, build, force, main, every_process)


def _read_stamp(stamp: Path) -> dict:
    try:
        return json.loads(stamp.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _cached_artifact(out_dir: Path, config: dict, build: Callable[[Path], Any], force: bool, main: bool = True,
                     every_process: bool = False) -> Path:
    stamp = out_dir / "artifact.json"
    key = config_hash(config)
    record = {"config_hash": key, "finished": False, "config": config}
    if main:
        previous = _read_stamp(stamp)
        fresh = previous.get("config_hash") == key and previous.get("finished") and not force
        if not fresh:
            if out_dir.exists() and (previous.get("config_hash") != key or force):
                shutil.rmtree(out_dir)
            out_dir.mkdir(parents=True, exist_ok=True)
            write_json(stamp, record)
    wait_for_everyone()
    if not main:  # what the main process found: a finished build, or a started one
        fresh = bool(_read_stamp(stamp).get("finished"))
    if fresh:
        return out_dir
    if main or every_process:
        build(out_dir)
    wait_for_everyone()
    if main:
        write_json(stamp, {**record, "finished": True})
    wait_for_everyone()
    return out_dir


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to a temporary file beside `path`, then rename it over `path`: a process reading the file at the
    same time (two notebooks under `pytest -n 2`) sees the old or the new content, never half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text_atomic(path, json.dumps(obj, ensure_ascii=False, indent=2, default=float) + "\n")


def log_yscale(ax) -> None:
    """A log y axis labelled in plain decimals (0.05, 0.1, 0.2, 0.5, 1): NanumGothic (Korean labels) has no U+2212,
    the minus sign of matplotlib's 10^-n labels, which it would draw as a box."""
    import math

    from matplotlib.ticker import FuncFormatter

    def label(y, _pos, digits=(1,)):
        lead = round(y / 10 ** math.floor(math.log10(y))) if y > 0 else 0
        return f"{y:g}" if lead in digits else ""

    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(label))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda y, pos: label(y, pos, digits=(2, 5))))

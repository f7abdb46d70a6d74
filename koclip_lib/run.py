"""Run the notebooks in order with a params file; executed copies go to outputs/notebooks/.

    python -m koclip_lib.run --params params/mini.yaml            # every notebook (the main job)
    python -m koclip_lib.run --params params/mini.yaml --only 01  # one (or several: --only 01 02)
    python -m koclip_lib.run --params params/mini.yaml --build --jobs 2  # only train the models, two at a time
    accelerate launch --multi_gpu --num_processes 8 -m koclip_lib.run --params params/full.yaml --build  # data-parallel
    python -m koclip_lib.run --params params/full-shapes.yaml --build --record  # each step alone: seconds, peak memory

The jupytext `.py` file is the source of each notebook (readable diffs); papermill injects `params_file`
into the cell tagged `parameters` and executes with the repository root as working directory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from .cli import CliParser, cli_logging, existing_path
from .common import REPO_ROOT

NOTEBOOK_DIR = REPO_ROOT / "notebooks"


def list_notebooks(only: list[str] | None = None) -> list[Path]:
    """notebooks/NN_name.py in order, optionally only those whose number (01, 01b) or full name is in `only`."""
    found = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]*_*.py"))  # 01_corpus, 01b_generator, 02_distill, ...
    if only:
        found = [p for p in found if any(o in (p.stem, p.stem.split("_", 1)[0]) for o in only)]
    return found


# Each notebook's kernel runs torch on one thread: a trained model then does not depend on the machine's core count
# (another thread count sums floats in another order and trains another model: 2 threads and 1 gave held-out English
# accuracies 6-16 points apart), so `make all` and CI reproduce each other; on these tiny models a second thread
# gains little.
KERNEL_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def run_notebook(source: Path, params_file: str, out_dir: Path, kernel: str = "python3", extra: dict | None = None) -> Path:
    import os

    import jupytext
    import papermill as pm

    out_dir.mkdir(parents=True, exist_ok=True)
    nb = jupytext.read(source)
    nb.metadata.setdefault("kernelspec", {"name": kernel, "display_name": "Python 3", "language": "python"})
    staged = out_dir / f".{source.stem}.input.ipynb"
    jupytext.write(nb, staged, fmt="ipynb")
    target = out_dir / f"{source.stem}.ipynb"
    saved = {k: os.environ.get(k) for k in KERNEL_ENV}
    os.environ.update(KERNEL_ENV)  # the kernel process inherits this environment
    try:
        pm.execute_notebook(str(staged), str(target), parameters={"params_file": params_file, **(extra or {})},
                            cwd=str(REPO_ROOT), kernel_name=kernel, progress_bar=False, log_output=False)
    finally:
        staged.unlink(missing_ok=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return target


# What the notebooks train, as lanes that run side by side (`--build --jobs 2`), one process and one thread each.
# Every step is a `plan` call the notebooks make too, so they then find the models cached; a lane that reaches an
# artifact the other is building waits for it (`common.cached_artifact` locks). A profile's `build_lanes` lists them;
# the mini profile orders its lanes so that neither waits long: the chain VAE -> UNet -> unet student -> Korean LoRA
# is the longest, so the first lane trains only that, while the second trains the rest.
DEFAULT_LANES = (("corpus", "teacher_students", "students", "translator", "loras", "korean_sd", "sweep_versions"),)


def build_steps(params: dict) -> dict:
    """Each build step of a profile: a name -> a call of `plan` (or of the profile's inputs, for what they make)."""
    from . import distill, plan

    inputs = plan.profile_inputs(params)
    objectives = distill.training_order(params.get("distill", {}).get("objectives", []))
    teacher_only = [o for o in objectives if not distill.OBJECTIVES[o].needs_sd]
    with_sd = distill.training_order([o for o in objectives if distill.OBJECTIVES[o].needs_sd])  # + what they start from
    adapters = params.get("lora", {}).get("adapters", [])
    optional = {name: getattr(inputs, name) for name in ("vae", "generator_paths", "judge", "from_scratch_probe")
                if hasattr(inputs, name)}
    return {
        **optional,
        "corpus": inputs.corpus,
        "teacher": inputs.teacher,
        "sd": inputs.sd,
        "translator": lambda: plan.translator(params),
        "sweep_versions": inputs.sweep_versions,
        # the students that need only the teacher, those another starts from first (the unet stage's sequence student)
        "teacher_students": lambda: plan.students(
            params, sorted(teacher_only, key=lambda o: o not in {distill.OBJECTIVES[n].starts_from for n in objectives})),
        "students": lambda: plan.students(params, with_sd),
        "loras": lambda: plan.loras(params, [a["name"] for a in adapters if a.get("text_encoder", "student") == "student"]),
        "teacher_loras": lambda: plan.loras(params, [a["name"] for a in adapters if a.get("text_encoder") == "teacher"]),
        "registry": lambda: plan.loras(params),
        "korean_sd": lambda: plan.save_korean_pipeline(params),
        "realtext": lambda: build_realtext(params) if params.get("realtext") else None,
    }


def build_lanes(params: dict) -> list[list[str]]:
    return [list(lane) for lane in params.get("build_lanes") or DEFAULT_LANES]


def build_realtext(profile: dict) -> None:
    """Notebook 02b's models (its own profile, `realtext:`), when its data is there; the notebook says what is missing."""
    from . import realtext
    from .common import load_params

    params = load_params(profile["realtext"])
    data = realtext.locate_data(params)
    if not data.complete:
        return
    root = Path(params["root"])
    corpus_dir = realtext.ensure_corpus(params, data, root)
    teacher, teacher_tok = realtext.load_cached_teacher(params, realtext.teacher_texts(corpus_dir, data), root)
    realtext.ensure_students(params, corpus_dir, realtext.ensure_backbones(params, corpus_dir, root), teacher, teacher_tok, root)


def build_step(step: str, params: dict) -> None:
    steps = build_steps(params)
    if step not in steps:
        raise SystemExit(f"error: unknown build step {step!r} in the profile's build_lanes; known: {', '.join(sorted(steps))}")
    started = time.time()
    steps[step]()
    print(f"  built {step} ({time.time() - started:.0f} s)", flush=True)


def build(params_file: str, jobs: int = 2) -> None:
    """Train every model the notebooks use, `jobs` lanes at a time (each lane its own one-thread process).

    Under a launcher (`accelerate launch --num_processes N -m koclip_lib.run --build`) every process of the group
    runs the lanes' steps one after the other in itself: a lane forked from a process of the group would inherit its
    RANK/WORLD_SIZE and join a rendezvous that the other lanes never reach."""
    from .common import distributed, load_params

    params = load_params(params_file)
    lanes = build_lanes(params)
    if distributed() is not None:
        if jobs > 1 and distributed().is_main_process:
            print(f"under a launcher the build lanes run one after the other in each process (--jobs {jobs} ignored)",
                  flush=True)
        os.chdir(REPO_ROOT)
        for lane in lanes:
            for step in lane:
                build_step(step, params)
        return

    def start(lane: int) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "koclip_lib.run", "--params", params_file, "--lane", str(lane)],
                                env={**os.environ, **KERNEL_ENV}, cwd=REPO_ROOT)

    if jobs < 2:  # one lane after the other
        failed = [lane for lane in range(len(lanes)) if start(lane).wait() != 0]
    else:
        procs = [start(lane) for lane in range(len(lanes))]
        failed = [lane for lane, p in enumerate(procs) if p.wait() != 0]
    if failed:
        sys.exit(f"error: build lane(s) {failed} failed; their output is above")


def device_name() -> str:
    """The device a record is named after: "cpu", or the GPU's model ("h200" for an NVIDIA H200)."""
    import re

    import torch

    if not torch.cuda.is_available():
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(0).lower().replace("nvidia", "")).strip("-")


def parameter_counts(params: dict) -> dict[str, int]:
    """The parameters in each folder of the profile's `models:` (read from the safetensors headers alone)."""
    from math import prod

    from safetensors import safe_open

    counts = {}
    for hub_id, entry in (params.get("models") or {}).items():
        n = 0
        for path in sorted(Path(entry["path"]).rglob("*.safetensors")):
            with safe_open(str(path), "pt") as f:
                n += sum(prod(f.get_slice(k).get_shape()) for k in f.keys())
        counts[hub_id] = n
    return counts


def measure_step(step: str, params: dict, out: Path) -> None:
    """One build step in this process, then its seconds and this process's peak memory to `out` (JSON)."""
    import resource

    import torch

    from .common import write_json

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    started = time.time()
    build_step(step, params)
    write_json(out, {"step": step, "seconds": round(time.time() - started, 1),
                     "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),  # KiB on Linux
                     "peak_gpu_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None})


def record_build(params_file: str) -> Path:
    """The profile's build steps one after the other, each in a process of its own so that its peak memory is its
    own: seconds and peak memory per step, written after every step to `<bench_dir>/<profile>-<device>.json`.
    Exits 1 naming the steps that failed (the record keeps their exit codes)."""
    import platform
    import tempfile

    from .common import load_params, write_json

    params = load_params(params_file)
    path = Path(params.get("bench_dir", "outputs/bench")) / f"{params.get('profile', Path(params_file).stem)}-{device_name()}.json"
    record = {"profile": params_file, "device": device_name(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
              "threads": KERNEL_ENV["OMP_NUM_THREADS"], "parameters": parameter_counts(params), "steps": []}
    started = time.time()
    for step in [step for lane in build_lanes(params) for step in lane]:
        with tempfile.TemporaryDirectory() as tmp:
            measured = Path(tmp) / "step.json"
            rc = subprocess.call([sys.executable, "-m", "koclip_lib.run", "--params", params_file, "--step", step,
                                  "--measure", str(measured)], env={**os.environ, **KERNEL_ENV}, cwd=REPO_ROOT)
            entry = json.loads(measured.read_text(encoding="utf-8")) if rc == 0 else {"step": step}
        record["steps"].append({**entry, "ok": rc == 0, "exit_code": rc})
        record["seconds"] = round(time.time() - started, 1)
        write_json(path, record)
        print(f"  {step}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} {entry.get('seconds', '')} s, "
              f"peak {entry.get('peak_rss_gb', '?')} GB resident", flush=True)
    failed = [s["step"] for s in record["steps"] if not s["ok"]]
    if failed:
        sys.exit(f"error: build step(s) {failed} failed; the record is {path}")
    return path


def main(argv: list[str] | None = None) -> None:
    cli_logging()
    ap = CliParser(prog="python -m koclip_lib.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", type=existing_path, help="profile file (default params/mini.yaml of the repository)")
    ap.add_argument("--only", nargs="*", help="notebook numbers or names, e.g. 01 02_distill")
    ap.add_argument("--out", default=str(REPO_ROOT / "outputs" / "notebooks"), help="where executed notebooks go")
    ap.add_argument("--build", action="store_true", help="train the models the notebooks use, then stop")
    ap.add_argument("--jobs", type=int, default=2, help="build lanes run side by side (--build)")
    ap.add_argument("--record", action="store_true",
                    help="with --build: each step in a process of its own, one after the other; seconds and peak "
                         "memory per step to <bench_dir>/<profile>-<device>.json")
    ap.add_argument("--lane", type=int, help=argparse.SUPPRESS)  # one build lane, in this process (what --build starts)
    ap.add_argument("--step", help=argparse.SUPPRESS)  # one build step, in this process (what --record starts) ...
    ap.add_argument("--measure", help=argparse.SUPPRESS)  # ... measured into this JSON file
    args = ap.parse_args(argv)
    args.params = args.params or "params/mini.yaml"  # relative: the notebooks run in the repository root
    if args.step is not None:
        from .common import load_params

        os.chdir(REPO_ROOT)
        measure_step(args.step, load_params(args.params), Path(args.measure))
        return
    if args.lane is not None:
        from .common import load_params

        params = load_params(args.params)
        os.chdir(REPO_ROOT)  # as the notebooks run: cache keys hold paths relative to the repository root
        for step in build_lanes(params)[args.lane]:
            build_step(step, params)
        return
    if args.build and args.record:
        print(f"recorded the build in {record_build(args.params)}", flush=True)
        return
    if args.build:
        started = time.time()
        build(args.params, args.jobs)
        print(f"built the models in {time.time() - started:.0f} s", flush=True)
        return
    notebooks = list_notebooks(args.only)
    if not notebooks:
        ap.exit(2, f"error: no notebook matches {args.only}; have {[p.stem for p in list_notebooks()]}\n")
    for source in notebooks:
        started = time.time()
        print(f"running {source.name} with {args.params} ...", flush=True)
        target = run_notebook(source, args.params, Path(args.out))
        print(f"  -> {target} ({time.time() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])

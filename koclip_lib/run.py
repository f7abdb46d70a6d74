"""Run the notebooks in order with a params file; executed copies go to outputs/notebooks/.

    python -m koclip_lib.run --params params/mini.yaml            # every notebook (the main job)
    python -m koclip_lib.run --params params/mini.yaml --only 01  # one (or several: --only 01 02)

The jupytext `.py` file is the source of each notebook (readable diffs); papermill injects `params_file`
into the cell tagged `parameters` and executes with the repository root as working directory.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m koclip_lib.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="params/mini.yaml", help="profile file under params/")
    ap.add_argument("--only", nargs="*", help="notebook numbers or names, e.g. 01 02_distill")
    ap.add_argument("--out", default=str(REPO_ROOT / "outputs" / "notebooks"), help="where executed notebooks go")
    args = ap.parse_args(argv)
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

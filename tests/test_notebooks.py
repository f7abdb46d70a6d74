"""Every notebook executes on the stand-in profile (params/standin.yaml: the full profile's plan on hub-layout
stand-ins) without an error and writes its metrics. The mini profile's notebooks are the main job's (`make all`),
which checks their numbers against the README's claims (`python -m koclip_lib.targets`).

Executed copies and metrics go to a temporary folder; trained models are shared through the profile's cache
(outputs/standin), which `make test` builds first (`run --params params/standin.yaml --build`).
"""
import json
import subprocess
import sys
from pathlib import Path

import jupytext
import pytest

from koclip_lib.run import list_notebooks, run_notebook

STANDIN = "params/standin.yaml"
NOTEBOOKS = list_notebooks()
# `make test` runs pytest in two workers (pytest-xdist, --dist loadgroup): 02 -> 03 -> 05 share an xdist group, so
# they run in one worker, in file order, as each reads what the one before saved: 02 picks <root>/student, 03 saves
# <root>/korean_sd with it, 05 serves that.
CHAINED = ("02_distill", "03_sd_sweep", "05_optimize")


def group(stem: str) -> pytest.MarkDecorator:
    return pytest.mark.xdist_group("+".join(CHAINED) if stem in CHAINED else stem)


@pytest.fixture(scope="session")  # not module: a worker that runs another file's test in between would make a new one
def run_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("notebooks")


def test_every_notebook_is_paired_and_parameterised():
    assert NOTEBOOKS, "no notebooks found"
    for source in NOTEBOOKS:
        paired = source.with_suffix(".ipynb")
        assert paired.exists(), f"{source.name} has no paired .ipynb (run `make sync`)"
        a, b = jupytext.read(source), jupytext.read(paired)
        assert [c.source for c in a.cells] == [c.source for c in b.cells], f"{paired.name} is out of sync with {source.name}"
        first_code = next(c for c in a.cells if c.cell_type == "code")
        assert "parameters" in first_code.metadata.get("tags", []), f"{source.name}: first code cell not tagged parameters"


def test_kernels_train_on_one_thread_so_runs_reproduce(tmp_path):
    """`make all` and CI must train the same models on any core count: the runner pins the kernel's torch threads."""
    source = tmp_path / "threads.py"
    source.write_text('# %% tags=["parameters"]\nparams_file = ""\n\n# %%\nimport torch\nprint("threads", torch.get_num_threads())\n',
                      encoding="utf-8")
    out = run_notebook(source, "params/mini.yaml", tmp_path / "out")
    printed = ["".join(o.get("text", "")) for c in json.loads(out.read_text(encoding="utf-8"))["cells"] for o in c.get("outputs", [])]
    assert "threads 1\n" in printed


@pytest.mark.parametrize("source", [pytest.param(p, marks=group(p.stem), id=p.stem) for p in NOTEBOOKS])
def test_notebook_executes_on_the_standin_profile(source, run_dir, standin_hub):
    overrides = {"metrics_dir": str(run_dir / "metrics"), "figures_dir": str(run_dir / "figures"),
                 "bench_dir": str(run_dir / "bench")}
    out = run_notebook(source, STANDIN, run_dir, extra={"overrides": overrides})
    nb = json.loads(out.read_text(encoding="utf-8"))
    errors = [o for c in nb["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    written = run_dir / "metrics" / f"{source.stem}.json"
    assert written.exists() and json.loads(written.read_text(encoding="utf-8")), f"{source.stem} wrote no metrics"


# notebooks with cells whose output must come out the same when the executed copy runs again: the cells marked
# `# NBVAL_CHECK_OUTPUT` (nbval's lax mode checks only those; the others must just run)
NBVAL_CHECKED = [p for p in NOTEBOOKS if "# NBVAL_CHECK_OUTPUT" in p.read_text(encoding="utf-8")]


@pytest.mark.parametrize("source", [pytest.param(p, marks=group(p.stem), id=p.stem) for p in NBVAL_CHECKED])
def test_executed_notebook_reproduces_its_checked_outputs_under_nbval(source, run_dir, standin_hub):
    repo = Path(__file__).resolve().parent.parent
    executed = run_dir / f"{source.stem}.ipynb"
    if not executed.exists():  # the papermill test above writes it when it ran first in this worker
        overrides = {"metrics_dir": str(run_dir / "metrics"), "figures_dir": str(run_dir / "figures"),
                     "bench_dir": str(run_dir / "bench")}
        executed = run_notebook(source, STANDIN, run_dir, extra={"overrides": overrides})
    # nbval starts the kernel in the notebook's folder; the profile's paths are relative to the repository root
    copy = repo / f".nbval-{source.stem}.ipynb"
    copy.write_bytes(executed.read_bytes())
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "--nbval-lax", "-p", "no:xdist", "-p", "no:cacheprovider",
                               "-q", "-o", "addopts=", str(copy)], cwd=repo, capture_output=True, text=True, timeout=900)
    finally:
        copy.unlink(missing_ok=True)
    assert proc.returncode == 0, proc.stdout[-4000:]
    cells = sum(c.cell_type == "code" for c in jupytext.read(source).cells)
    assert f"{cells + 1} passed" in proc.stdout, proc.stdout[-800:]  # every code cell ran, papermill's parameters too

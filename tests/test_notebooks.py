"""The main job as CI runs it: every notebook executes on the mini profile, then its numbers meet the targets.

Executed copies and metrics go to a temporary folder (the committed record in outputs/ is written by `make all`);
trained models are shared with the main job through the outputs/mini cache.
"""
import json

import jupytext
import pytest

from koclip_lib.run import list_notebooks, run_notebook

NOTEBOOKS = list_notebooks()


@pytest.fixture(scope="module")
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


@pytest.mark.parametrize("source", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(source, run_dir):
    overrides = {"metrics_dir": str(run_dir / "metrics"), "figures_dir": str(run_dir / "figures")}
    out = run_notebook(source, "params/mini.yaml", run_dir, extra={"overrides": overrides})
    nb = json.loads(out.read_text(encoding="utf-8"))
    errors = [o for c in nb["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors


def _metrics(run_dir, name):
    path = run_dir / "metrics" / f"{name}.json"
    if not path.exists():
        pytest.fail(f"{path.name} missing: its notebook did not run or failed")
    return json.loads(path.read_text(encoding="utf-8"))


def test_corpus_and_classifier_targets(run_dir):
    m = _metrics(run_dir, "01_corpus")
    assert m["mini_corpus"]["kept"] > 1000
    assert all(v >= 0.98 for v in m["classifier_test_accuracy"].values())


def test_english_generator_targets(run_dir):
    """Issue target: English prompts on held-out colour-shape pairs, colour >= 90% and shape >= 75%;
    Korean prompts on the same English-only pipeline stay far below (the problem the project solves)."""
    g = _metrics(run_dir, "01b_generator")["generator"]
    assert g["English, held-out"]["color acc"] >= 0.90, g
    assert g["English, held-out"]["shape acc"] >= 0.75, g
    assert g["Korean, held-out"]["color acc"] < 0.5 * g["English, held-out"]["color acc"], g


def test_distillation_targets(run_dir):
    """Issue target: the best objective's Korean-prompt accuracy on held-out pairs is >= 90% of the teacher's
    English-prompt accuracy, for colour and for shape; all three objectives and the raw baseline are measured."""
    m = _metrics(run_dir, "02_distill")
    best = m["ratio_to_teacher_heldout"][m["best_objective"]]
    assert best["color"] >= 0.9 and best["shape"] >= 0.9, m["ratio_to_teacher_heldout"]
    encoders = {key.split(" | ")[0] for key in m["image"]}
    assert {"teacher · Korean prompts (the problem)", "student · pooled · Korean prompts",
            "student · sequence · Korean prompts", "student · unet · Korean prompts"} <= encoders
    raw = m["embedding"]["teacher reading Korean (no distillation)"]
    assert max(e["R@1"] for k, e in m["embedding"].items() if k.startswith("student")) > raw["R@1"]

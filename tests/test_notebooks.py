"""The main job as CI runs it: every notebook executes on the mini profile, then its numbers meet the targets.

Executed copies and metrics go to a temporary folder (the committed record in outputs/ is written by `make all`);
trained models are shared with the main job through the outputs/mini cache.
"""
import json

import jupytext
import pytest

from koclip_lib.run import list_notebooks, run_notebook

NOTEBOOKS = list_notebooks()
# `make test` runs pytest in two workers (pytest-xdist, --dist loadgroup): a notebook and the checks of its metrics
# share an xdist group, so they run in one worker, in file order. 02 -> 03 -> 05 share one group, as each reads what
# the one before saved: 02 picks outputs/mini/student, 03 saves outputs/mini/korean_sd with it, 05 serves that.
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
def test_notebook_executes(source, run_dir, mini_params):
    overrides = {"metrics_dir": str(run_dir / "metrics"), "figures_dir": str(run_dir / "figures")}
    if source.stem == "05_optimize":  # the quick benchmark (4 prompts, no torch.compile on CPU: ~30 s, not ~5 min)
        optimize = mini_params["optimize"]
        overrides["bench_dir"] = str(run_dir / "bench")
        overrides["optimize"] = {**optimize, "bench": {**optimize["bench"], "quick": True, "prompts": 4}}
    out = run_notebook(source, "params/mini.yaml", run_dir, extra={"overrides": overrides})
    nb = json.loads(out.read_text(encoding="utf-8"))
    errors = [o for c in nb["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors


def _metrics(run_dir, name):
    path = run_dir / "metrics" / f"{name}.json"
    if not path.exists():
        pytest.fail(f"{path.name} missing: its notebook did not run or failed")
    return json.loads(path.read_text(encoding="utf-8"))


@group("01_corpus")
def test_corpus_and_classifier_targets(run_dir):
    m = _metrics(run_dir, "01_corpus")
    assert m["mini_corpus"]["kept"] > 1000
    assert all(v >= 0.98 for v in m["classifier_test_accuracy"].values())
    # ink-wash washes after the VAE: the hardest colours, and the ceiling for every ink-wash image the generator draws
    assert m["classifier_ink_round_trip_accuracy"]["color"] >= 0.95, m["classifier_ink_round_trip_accuracy"]


@group("01b_generator")
def test_english_generator_targets(run_dir):
    """The generator follows English prompts on colour-shape pairs it was trained on, and on held-out pairs reaches
    the issue's target (colour >= 90%, shape >= 75%); Korean prompts on the same English-only pipeline fall to about
    chance (1/8 colour, 1/5 shape).

    How far a generator generalises to unseen colour-shape pairs depends on its training far more than on seen pairs:
    the UNet of plain and ink-wash scenes at 2,500 steps reached 83.0% / 86.5% held-out, at 4,000 steps (the profile)
    94.0% / 90.5% (README, outputs/metrics/01b_generator.json). The runner pins one torch thread, so `make all` and
    CI train the same models. It also learned ink-wash from captions that name it: the job draws all of them
    ink-wash, at 96.5% / 93.0% colour (held-out / seen).
    """
    m = _metrics(run_dir, "01b_generator")
    g, ink = m["generator"], m["generator_ink_captions"]
    assert g["English, seen"]["color acc"] >= 0.90 and g["English, seen"]["shape acc"] >= 0.90, g
    assert g["English, held-out"]["color acc"] >= 0.90 and g["English, held-out"]["shape acc"] >= 0.75, g
    for pairs in ("seen", "held-out"):
        assert g[f"Korean, {pairs}"]["color acc"] < 0.5 * g[f"English, {pairs}"]["color acc"], g
        # the style follows the caption: plain prompts plain, ink-wash captions ink-wash and still in their colour
        assert g[f"English, {pairs}"]["style acc"] >= 0.95, g
        styled = ink[f"English ink-wash caption, {pairs}"]
        assert styled["style acc"] >= 0.9 and styled["color acc"] >= 0.7, styled


@group("02_distill")
def test_distillation_targets(run_dir):
    """All three objectives and the raw baseline are measured; distilling the whole sequence is what makes the
    generator read Korean (the seed's pooled-only loss stays near chance); the best student matches the teacher on
    trained colour-shape pairs.

    The issue's target is >= 90% of the teacher's English accuracy on held-out pairs, for colour and for shape. The
    seeded main job reaches 103% for colour and 91% for shape (the unet objective; README,
    outputs/metrics/02_distill.json): both bounds are the target.
    """
    m = _metrics(run_dir, "02_distill")
    image = {key: row for key, row in m["image"].items()}
    encoders = {key.split(" | ")[0] for key in image}
    assert {"teacher · Korean prompts (the problem)", "student · pooled · Korean prompts",
            "student · sequence · Korean prompts", "student · unet · Korean prompts"} <= encoders
    best = m["best_objective"]
    assert best in ("sequence", "unet")
    teacher_seen = image["teacher · English prompts | seen"]
    best_seen = image[f"student · {best} · Korean prompts | seen"]
    for attr in ("color acc", "shape acc"):
        assert best_seen[attr] >= 0.9 * teacher_seen[attr], (attr, best_seen, teacher_seen)
        assert best_seen[attr] > 2 * image["student · pooled · Korean prompts | seen"][attr]
    held = m["ratio_to_teacher_heldout"][best]
    assert held["color"] >= 0.9 and held["shape"] >= 0.9, m["ratio_to_teacher_heldout"]
    students = {k: e for k, e in m["embedding"].items() if k.startswith("student")}
    raw = m["embedding"]["teacher reading Korean (no distillation)"]
    assert max(e["R@1"] for e in students.values()) > 50 * max(raw["R@1"], 0.001)
    assert students["student · sequence"]["seq_cosine"] > 0.9 > students["student · pooled"]["seq_cosine"]


@group("00_feasibility")
def test_feasibility_numbers(run_dir):
    """(a) and (b) are measured on the same prompts in one run; the student's text conditioning is faster than
    translating then encoding; (c) was measured for one epoch and its estimate covers more than that."""
    m = _metrics(run_dir, "00_feasibility")
    quality = m["quality"]
    swap, translate = quality["(a) encoder swap"], quality["(b) translate, then generate"]
    raw = quality["problem: raw Korean prompt"]
    for attr in ("held-out color", "seen color", "seen shape"):
        assert swap[attr] > 2 * raw[attr] and translate[attr] > 2 * raw[attr], (attr, quality)
    assert m["text_conditioning_ratio_b_over_a"] > 1.0, m["speed"]
    scratch = m["from_scratch"]
    assert scratch["estimated_seconds_to_quality"] > scratch["measured_seconds"] > 0
    assert scratch["unet"]["steps"] < scratch["unet"]["steps_to_quality"]  # stopped, as the option says


@group("03_sd_sweep")
def test_sd_sweep_rows(run_dir):
    """Every SD 1.x checkpoint takes the student; SD 2.x / SDXL / SD 3 cells hold the compatibility error; the saved
    Korean pipeline scores through the evaluate CLI."""
    m = _metrics(run_dir, "03_sd_sweep")
    rows = m["rows"]
    for version in ("SD 2.x", "SDXL", "SD 3"):
        errors = [row["error"] for key, row in rows.items() if key.startswith(f"{version} | student")]
        assert errors and all("SD 1.x" in e for e in errors), (version, errors)
    assert "1024" in rows["SD 2.x | student · unet"]["error"]
    for version in ("mini-sd", "mini-sd-ink"):
        student, raw = rows[f"{version} | student · unet"], rows[f"{version} | teacher · Korean prompt (raw)"]
        assert "error" not in student and student["seen color"] > 2 * raw["seen color"], (student, raw)
    assert m["korean_sd_cli"]["images"] > 0 and m["korean_sd_cli"]["accuracy"]["color"] > 0.5


@group("02b_realtext")
def test_realtext_targets(run_dir):
    """Notebook 02b: without ../shared it names what is missing; with it, every row of the FLORES-200 devtest table is
    measured on all 1012 pairs, FLORES is not in the training corpus, and the students beat the raw teacher reading
    Korean by a wide margin. The translators and USE are reported, not asserted against: at this data scale they win.
    The seeded main job reaches R@1 0.231 vs 0.123, R@5 0.468 vs 0.177, pooled cosine 0.348 vs 0.101 (README,
    outputs/metrics/02b_realtext.json); the bounds below keep a margin."""
    m = _metrics(run_dir, "02b_realtext")
    if m["status"] != "ok":
        assert m["missing"], m
        return
    table = m["flores_devtest"]
    assert m["corpus"]["flores_test_sentences_in_corpus"] == 0
    assert sum(k.startswith("translate (") for k in table) == 4 and any(k.startswith("USE") for k in table)
    assert all(row["pairs"] == 1012 and row["candidates"] == 1012 for row in table.values())
    students = {k: row for k, row in table.items() if k.startswith("student")}
    assert {"student · pooled", "student · sequence"} <= set(students)
    raw = table["teacher reading Korean (the problem)"]
    best = max(students.values(), key=lambda row: row["R@1"])
    assert best["R@1"] >= 1.5 * raw["R@1"] and best["R@5"] >= 2 * raw["R@5"], (best, raw)
    assert best["cos_to_teacher_en"] >= 2.5 * raw["cos_to_teacher_en"], (best, raw)


@group("05_optimize")
def test_optimize_targets(run_dir):
    """Notebook 05 (issue 7), read from its metrics. The service: 200 requests at concurrency 32 against the mini
    Korean pipeline lose no accepted job, with and without a kill -9 and a restart on the same job store (which really
    happened and resumed jobs); the default queue of 16 is over capacity at 32 clients, so some requests get 429, and
    every request was either accepted or answered 429/503 at once; p99 of accepted jobs is below the deadline. The
    benchmark: the optimised settings are faster than the baseline timed with them, with attribute accuracy held.
    The test runs the benchmark in --quick mode (4 prompts, no torch.compile) under other load, so the speed bounds
    are conservative: the committed full run reaches 8.3x at batch 1 and 21.6x at batch 8 (outputs/bench/mini-cpu.md),
    a quick run about 5x and 12x, mostly from 8 DPM-Solver++ steps instead of 50 PNDM steps."""
    m = _metrics(run_dir, "05_optimize")
    plain, killed = m["loadtest"], m["kill_restart"]
    for r in (plain, killed):
        assert r["lost"] == 0 and r["invalid"] == 0 and r["failed"] == 0, r
        assert r["succeeded"] == r["accepted"] == r["db_states"]["succeeded"] > 0, r
        assert r["latency_s"]["p99"] < r["deadline_s"], r
    assert plain["rejected_429"] > 0 and plain["submit_errors"] == 0, plain
    assert plain["accepted"] + plain["rejected_429"] + plain["rejected_503"] == plain["requests"] == 200, plain
    assert plain["rejected_answer_s"]["max"] < 2.0, plain  # at once: no accept-then-time-out
    restart = killed["restart"]
    assert restart["killed_after_s"] is not None and killed["server"]["processes"] == 2, restart
    assert restart["resumed"] >= 1, restart
    b = m["bench"]
    optimised = b["optimised"]
    assert optimised and all(s["speedup_p50"] > 1 for s in optimised.values()), optimised
    assert max(s["images_per_s_ratio"] for s in optimised.values()) >= 3, optimised  # the CPU target
    for name, s in optimised.items():
        assert s["quality_held"] and s["quality"]["accuracy_delta_vs_baseline"] >= -b["quality_tolerance"], (name, s)
    assert b["text_conditioning"]["ratio_generate_to_student"] > 1, b["text_conditioning"]


@group("04_lora")
def test_lora_targets(run_dir):
    """Notebook 04 (issue 6), read from its metrics: with the ink LoRA loaded, the trigger 백묘법 switches the ink-wash
    style on (>= 80% of images) and without it the style stays off (<= 20%), on held-out and on seen colour-shape
    pairs, while colour, with the trigger and without it, stays within 10 points of the pipeline without LoRA. The
    main job's narrowest margins (README): ink-wash with the trigger 83.5% / 84.5% (held-out / seen), colour with it
    on seen pairs 91.0% against 99.5%. The English LoRA (teacher captions) is measured behind the student too, not
    asserted against: it is the seed's observation, reported."""
    m = _metrics(run_dir, "04_lora")
    t = m["table"]
    base, off, on = t["Korean pipeline, no LoRA"], t["+ ink, no trigger"], t["+ ink, trigger 백묘법"]
    assert t["English pipeline, English ink-wash caption, no LoRA"]["seen style rate"] >= 0.9  # what the base draws
    for split in ("held-out", "seen"):
        assert on[f"{split} style rate"] >= 0.8 and off[f"{split} style rate"] <= 0.2, (split, on, off)
        assert off[f"{split} color"] >= base[f"{split} color"] - 0.10, (split, off, base)
        assert on[f"{split} color"] >= base[f"{split} color"] - 0.10, (split, on, base)
        assert base[f"{split} style rate"] <= 0.05, base
    assert any(k.startswith("Korean pipeline + ink-en") for k in t)
    assert sum(row["prompts"] for row in m["colour_breakdown"].values()) == 2 * m["n_prompts"]  # both splits, by colour
    files = m["files"]
    assert files["kohya vs diffusers, max |Δ|"] < 1e-4 and files["diffusers vs base, mean |Δ|"] > 1e-3, files

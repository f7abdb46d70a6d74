"""The full profile's plan, end to end on hub-layout stand-ins (`python -m koclip_lib.standins`): every stage reads
the profile's own inputs (its XLSX corpus, its SD checkpoint and that checkpoint's text encoder, its backbone,
translator, captioner and image folder), never the mini world's."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from koclip_lib.common import load_params

REPO = Path(__file__).resolve().parent.parent
SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"


def _retarget(params: dict, hub: Path, root: Path) -> dict:
    """params/standin.yaml with its stand-in folders under `hub` and its outputs under `root`."""
    old = "outputs/standin/hub"
    text = yaml.safe_dump(params, allow_unicode=True).replace(old, str(hub))
    params = yaml.safe_load(text)
    params.update(root=str(root), metrics_dir=str(root / "metrics"), figures_dir=str(root / "figures"))
    return params


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    from koclip_lib.standins import write_standins

    base = tmp_path_factory.mktemp("standin")
    hub, root = base / "hub", base / "out"
    write_standins(hub)
    params = _retarget(load_params(REPO / "params" / "standin.yaml"), hub, root)
    params_file = base / "standin.yaml"
    params_file.write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "koclip_lib.run", "--params", str(params_file), "--build", "--jobs", "1"],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return {"hub": hub, "root": root, "params": params, "log": proc.stdout + proc.stderr}


def test_standin_profile_is_the_full_profile_with_local_models():
    """Same sections and stages as full.yaml; every hub id full names is mapped to a stand-in folder."""
    full, standin = (load_params(REPO / "params" / f"{name}.yaml") for name in ("full", "standin"))
    assert set(full) - {"models"} <= set(standin), set(full) - set(standin)
    named = {full["sd"], full["distill"]["backbone"], full["translator"]["pretrained"], full["lora"]["captioner"],
             full["lora"]["caption_translator"], *(v["path"] for v in full["sweep"]["versions"])}
    assert named <= set(standin["models"]), named - set(standin["models"])
    assert "inputs_from" not in full and "inputs_from" not in standin  # hub profiles: no mini world


def test_corpus_is_built_from_the_profiles_xlsx(standin):
    summary = json.loads((standin["root"] / "corpus" / "summary.json").read_text(encoding="utf-8"))
    assert [Path(i["source"]).name for i in summary["inputs"]] == ["ko-en.xlsx"]
    assert summary["kept"] > 100
    assert summary["dropped"].get("en_over_token_limit", 0) >= 1, summary["dropped"]  # longer than the teacher's 77
    assert summary["malformed_total"] + summary["dropped"].get("empty", 0) >= 1  # rows without a side: skipped, counted


def test_students_read_the_sd_checkpoints_own_text_encoder_and_the_xlsx_corpus(standin):
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    import koclip_lib.distill  # noqa: F401  (registers the student with the Auto classes)

    for objective in ("pooled", "sequence", "unet"):
        folder = standin["root"] / f"student-{objective}"
        card = (folder / "README.md").read_text(encoding="utf-8")
        assert "ko-en.xlsx" in card and "mini-world" not in card, card
        config = AutoConfig.from_pretrained(folder)
        assert config.teacher == f"{SD15}/text_encoder", config.teacher
        teacher_width = json.loads((standin["hub"] / SD15 / "text_encoder" / "config.json").read_text())["hidden_size"]
        assert config.teacher_width == teacher_width
        assert config.backbone["model_type"] == "roberta"  # the stand-in klue/roberta-small, not a random mini one
        AutoModel.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    record = json.loads((standin["root"] / "student-unet" / "artifact.json").read_text(encoding="utf-8"))["config"]
    assert record["sd"]["model"] == SD15 and record["latents"]["source"] == "generated", record


def test_korean_pipeline_keeps_the_checkpoints_unet_byte_for_byte(standin):
    from koclip_lib.pipeline import KoreanStableDiffusionPipeline

    saved = standin["root"] / "korean_sd"
    for part in ("unet", "vae"):
        a, b = (sorted((folder / part).glob("*.safetensors")) for folder in (saved, standin["hub"] / SD15))
        assert a and [p.read_bytes() for p in a] == [p.read_bytes() for p in b], part
    pipe = KoreanStableDiffusionPipeline.from_pretrained(saved)
    image = pipe("의자에 앉은 한 마리의 핑크 고양이", num_inference_steps=2, output_type="np").images[0]
    assert image.shape[-1] == 3


@pytest.fixture(scope="module")
def bare_venv(tmp_path_factory):
    """A new venv with only torch, transformers and diffusers (this environment's versions): koclip not installed."""
    import diffusers
    import torch
    import transformers

    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    pins = [f"torch=={torch.__version__.split('+')[0]}", f"transformers=={transformers.__version__}",
            f"diffusers=={diffusers.__version__}"]
    proc = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *pins],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert subprocess.run([str(python), "-c", "import koclip_lib"], cwd=venv, capture_output=True).returncode != 0
    return python


def _run_bare(python, code: str, cwd) -> str:
    proc = subprocess.run([str(python), "-c", code], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


def test_plain_transformers_loads_the_student_without_koclip(standin, bare_venv, tmp_path):
    import numpy as np
    import torch

    from koclip_lib.distill import encode, load_student

    folder = standin["root"] / "student-sequence"
    assert (folder / "modeling_korean_text_encoder.py").is_file()
    assert json.loads((folder / "config.json").read_text())["auto_map"]["AutoModel"] == \
        "modeling_korean_text_encoder.KoreanTextEncoder"
    prompts = ["의자에 앉은 한 마리의 핑크 고양이", "왼쪽에 빨간 별이 있다"]
    _run_bare(bare_venv, f"""
import numpy as np, torch
from transformers import AutoModel, AutoTokenizer
model = AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
tokenizer = AutoTokenizer.from_pretrained({str(folder)!r})
with torch.no_grad():
    states = model(**tokenizer({prompts!r}, padding=True, return_tensors="pt")).last_hidden_state
np.save("states.npy", states.numpy())
""", tmp_path)
    bare = np.load(tmp_path / "states.npy")
    model, tokenizer = load_student(folder)
    with torch.no_grad():
        ours = encode(model, tokenizer, prompts).last_hidden_state.numpy()
    assert bare.shape == (2, model.config.num_positions, model.config.teacher_width)
    np.testing.assert_allclose(bare, ours, rtol=0, atol=1e-5)


def test_diffusers_loads_the_korean_pipeline_folder_without_koclip(standin, bare_venv, tmp_path):
    import numpy as np
    import torch

    from koclip_lib.pipeline import KoreanStableDiffusionPipeline

    saved = standin["root"] / "korean_sd"
    index = json.loads((saved / "model_index.json").read_text())
    assert index["text_encoder"] == ["modeling_korean_text_encoder", "KoreanTextEncoder"], index["text_encoder"]
    prompt, seed = "의자에 앉은 한 마리의 핑크 고양이", 1147446245
    out = _run_bare(bare_venv, f"""
import numpy as np, torch
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained({str(saved)!r}, custom_pipeline="pipeline", trust_remote_code=True)
print(type(pipe).__name__, type(pipe.text_encoder).__name__)
image = pipe({prompt!r}, num_inference_steps=3, output_type="np", generator=torch.Generator().manual_seed({seed})).images[0]
np.save("image.npy", image)
""", tmp_path)
    assert out.split() == ["KoreanStableDiffusionPipeline", "KoreanTextEncoder"], out
    pipe = KoreanStableDiffusionPipeline.from_pretrained(saved)
    ours = pipe(prompt, num_inference_steps=3, output_type="np", generator=torch.Generator().manual_seed(seed)).images[0]
    # the same image up to float summation order (the other process runs torch on its own thread count)
    np.testing.assert_allclose(np.load(tmp_path / "image.npy"), ours, rtol=0, atol=1e-5)


def test_cards_name_licences_base_models_and_metrics_and_their_usage_runs(standin, bare_venv, tmp_path):
    from huggingface_hub import ModelCard

    student = ModelCard.load(standin["root"] / "student-sequence" / "README.md")
    assert student.data.base_model == "klue/roberta-small" and student.data.library_name == "transformers"
    # derived from SD 1.5's text encoder (OpenRAIL-M), klue (CC-BY-SA) and Tatoeba: the strictest travels on
    assert student.data.license == "creativeml-openrail-m"
    assert "cc-by-sa-4.0" in student.text and "cc-by-2.0" in student.text
    assert {r.metric_type for r in student.data.eval_results} >= {"seq_cosine", "pooled_cosine", "R@1"}
    usage = student.text.split("```python\n")[1].split("```")[0]
    assert "trust_remote_code=True" in usage
    assert _run_bare(bare_venv, usage, tmp_path).strip() == "torch.Size([1, 77, 32])"  # the stand-in teacher is 32 wide
    pipeline = ModelCard.load(standin["root"] / "korean_sd" / "README.md")
    assert pipeline.data.base_model == SD15 and pipeline.data.license == "creativeml-openrail-m"
    assert pipeline.data.pipeline_tag == "text-to-image" and 'custom_pipeline="pipeline"' in pipeline.text


def test_lora_was_trained_on_the_image_folder_with_the_standin_captioner(standin):
    from PIL import Image

    from koclip_lib import lora
    from koclip_lib.plan import resolve_model

    data = standin["root"] / "loras" / "ink" / "data" / "train"
    records = [json.loads(line) for line in (data / "metadata.jsonl").read_text(encoding="utf-8").splitlines()]
    images = sorted(p.name for p in (standin["hub"] / "images" / "baekmyo").iterdir())
    assert sorted(r["source"] for r in records) == images
    first = next(r for r in records if r["source"] == images[0])
    params = standin["params"]
    captioner = lora.hf_captioner(resolve_model(params, params["lora"]["captioner"]), "cpu")
    assert first["caption_en"] == captioner([Image.open(standin["hub"] / "images" / "baekmyo" / images[0])])[0]
    assert first["text"].endswith("백묘법")
    card = json.loads((standin["root"] / "loras" / "ink" / "lora.json").read_text(encoding="utf-8"))
    assert card["images"] == len(images) and card["text_encoder"] == "KoreanTextEncoder"


def test_translator_is_the_profiles_pretrained_checkpoint(standin):
    from koclip_lib.translate import Translator

    record = json.loads((standin["root"] / "translator" / "artifact.json").read_text(encoding="utf-8"))["config"]
    assert record["pretrained"]["model"] == "Helsinki-NLP/opus-mt-ko-en", record
    assert Translator.from_pretrained(standin["root"] / "translator").translate(["안녕하세요"])


def test_nothing_outside_the_mini_world_imports_it():
    pattern = re.compile(r"^\s*(from\s+(\.+|koclip_lib\.)miniworld\b|import\s+koclip_lib\.miniworld|from\s+\.\s+import\s+.*\bminiworld\b)",
                         re.MULTILINE)
    offenders = [str(p.relative_to(REPO)) for p in (REPO / "koclip_lib").rglob("*.py")
                 if "miniworld" not in p.parts and pattern.search(p.read_text(encoding="utf-8"))]
    assert not offenders, offenders


def test_evaluation_prompts_come_from_the_profiles_corpus(standin):
    """A hub profile's notebooks generate from its own corpus: held-out prompts from the test split, seen ones from
    the train split, the Korean side and the same pairs' English, as plain prompt lists (no judge scores them)."""
    from koclip_lib import distill, evaluate, plan

    inputs = plan.HubInputs(standin["params"])
    files = inputs.eval_prompts()
    assert inputs.judge() is None and inputs.generator_paths()["classifier"] is None
    n = standin["params"]["evaluate"].get("n_prompts", 8)
    for name, split in (("heldout", "test"), ("seen", "train")):
        pairs = distill.load_pairs(standin["root"] / "corpus", split)[:n]
        for lang, side in (("ko", 0), ("en", 1)):
            rows = evaluate.read_prompt_tsv(files[f"{lang}_{name}"])
            assert [r.prompt for r in rows] == [p[side] for p in pairs] and not any(r.attributes for r in rows)


def test_a_recorded_build_measures_each_step_in_its_own_process_and_fails_on_a_failed_step(standin_hub, tmp_path):
    """`run --build --record` (the real-shape dry run's runner): one JSON entry per step with its seconds and peak
    memory, written as it goes; a step that fails is kept in the record and makes the command exit non-zero."""
    params = _retarget(load_params(REPO / "params" / "standin.yaml"), standin_hub, tmp_path / "out")
    params.update(profile="recorded", bench_dir=str(tmp_path / "bench"), build_lanes=[["corpus", "no_such_step"]])
    params_file = tmp_path / "recorded.yaml"
    params_file.write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "koclip_lib.run", "--params", str(params_file), "--build", "--record"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and "no_such_step" in proc.stderr, proc.stderr[-3000:]
    from koclip_lib.run import device_name

    record = json.loads((tmp_path / "bench" / f"recorded-{device_name()}.json").read_text(encoding="utf-8"))
    corpus, failed = record["steps"]
    assert corpus["step"] == "corpus" and corpus["ok"] and corpus["seconds"] > 0 and corpus["peak_rss_gb"] > 0.05
    assert failed == {"step": "no_such_step", "ok": False, "exit_code": failed["exit_code"]} and failed["exit_code"] != 0
    assert record["parameters"][SD15] > 0  # the models: folders' parameter counts
    assert (tmp_path / "out" / "corpus" / "summary.json").exists()

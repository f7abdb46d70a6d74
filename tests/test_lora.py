"""Korean style LoRAs on the tiny pipeline: dataset layout, training, both file layouts, mixing, registry, bad files."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from koclip_lib import evaluate, lora
from koclip_lib import miniworld as mw
from koclip_lib.common import REPO_ROOT, load_params

SEED = 1147446245
PROMPT = "왼쪽에 빨간 별이 있다"


@pytest.fixture(scope="module")
def korean_pipe(tiny_parts, tiny_student):
    from koclip_lib.pipeline import load_korean_pipeline

    return load_korean_pipeline(sd=tiny_parts / "sd", text_encoder=tiny_student, device="cpu")


@pytest.fixture(scope="module")
def ink_data(tmp_path_factory):
    return mw.render_style_dataset(tmp_path_factory.mktemp("ink_data"), mw.WorldConfig(), "ink", 24, "백묘법", seed=0)


def tiny_config(**overrides):
    cfg = dict(rank=4, alpha=8.0, preservation_weight=1.0, prior_steps=2, prior_guidance=3.0, trigger="백묘법",
               loop={"steps": 6, "lr": 0.02, "batch_size": 8, "warmup_steps": 0, "checkpoint_every": 3})
    cfg.update(overrides)
    return lora.LoraTrainConfig(**cfg)


@pytest.fixture(scope="module")
def trained(korean_pipe, ink_data, tmp_path_factory):
    """Two LoRAs trained on the tiny Korean pipeline: `ink` and `wash` (another seed), and their registry."""
    root = tmp_path_factory.mktemp("loras")
    registry = lora.LoraRegistry()
    for name, seed in (("ink", 0), ("wash", 1)):
        lora.train_lora(root / name, korean_pipe, ink_data, tiny_config(seed=seed), name=name, description=f"{name} test")
        registry.add(name, root / name / lora.WEIGHT_NAME, trigger="백묘법", style="ink")
    registry.save(root / "registry.json")
    return root, registry


def image(pipe, prompt=PROMPT):
    out = pipe(prompt, num_inference_steps=3, guidance_scale=3.0, output_type="np",
               generator=torch.Generator().manual_seed(SEED)).images[0]
    return np.asarray(out, dtype=np.float64)


def test_dataset_is_an_image_folder_with_the_trigger_in_every_caption(ink_data):
    ds = lora.load_image_dataset(ink_data)
    assert len(ds) == 24 and {"image", "text", "caption_ko", "caption_en"} <= set(ds.column_names)
    assert all(t.endswith(", 백묘법") and t.startswith(ko) for t, ko in zip(ds["text"], ds["caption_ko"]))
    assert "백묘법" not in "".join(ds["caption_ko"])  # the untriggered captions are what prior preservation reads
    assert lora.add_trigger("빨간 별", "백묘법", "start") == "백묘법, 빨간 별"
    with pytest.raises(ValueError, match="trigger position"):
        lora.add_trigger("빨간 별", "백묘법", "middle")


def test_trained_lora_is_written_in_both_layouts_and_leaves_the_pipeline_as_it_was(trained, korean_pipe):
    root, _ = trained
    card = json.loads((root / "ink" / "lora.json").read_text(encoding="utf-8"))
    assert card["trigger"] == "백묘법" and card["rank"] == 4 and card["alpha"] == 8.0 and card["steps"] == 6
    assert (root / "ink" / "ink.kohya.safetensors").exists()
    assert lora.loaded_adapters(korean_pipe) == []  # training removed its adapter
    assert not any(p.requires_grad for p in korean_pipe.unet.parameters())


def test_lora_loads_in_a_fresh_process_with_plain_diffusers_and_changes_the_output(trained, tiny_parts):
    root, _ = trained
    script = (
        "import sys, numpy as np, torch\n"
        "from diffusers import StableDiffusionPipeline\n"
        "pipe = StableDiffusionPipeline.from_pretrained(sys.argv[1]); pipe.set_progress_bar_config(disable=True)\n"
        "def draw():\n"
        "    return pipe('a red star', num_inference_steps=3, output_type='np', generator=torch.Generator().manual_seed(1)).images[0]\n"
        "before = draw(); pipe.load_lora_weights(sys.argv[2]); after = draw()\n"
        "print(float(np.abs(after - before).mean()), pipe.unet.peft_config['default_0'].lora_alpha)\n")
    out = subprocess.run([sys.executable, "-c", script, str(tiny_parts / "sd"), str(root / "ink")], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    diff, alpha = out.stdout.split()[-2:]
    assert float(diff) > 1e-4 and float(alpha) == 8.0  # the trained alpha (not the rank) came back from the metadata


def test_kohya_file_converts_back_with_diffusers_to_the_same_weights_and_images(trained, korean_pipe):
    from diffusers import StableDiffusionPipeline
    from safetensors import safe_open

    root, _ = trained
    kohya = root / "ink" / "ink.kohya.safetensors"
    with safe_open(str(kohya), "pt") as f:
        keys, meta = list(f.keys()), f.metadata()
    assert all(k.startswith("lora_unet_") for k in keys) and meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "8.0"
    back, alphas = StableDiffusionPipeline.lora_state_dict(str(kohya))  # diffusers' kohya -> diffusers conversion
    ours, _ = StableDiffusionPipeline.lora_state_dict(str(root / "ink" / lora.WEIGHT_NAME))
    assert len(back) == len(ours) and set(alphas.values()) == {8.0}
    reference = image(korean_pipe)
    drawn = []
    for path in (root / "ink", kohya):
        korean_pipe.load_lora_weights(str(path), adapter_name="probe")
        drawn.append(image(korean_pipe))
        korean_pipe.delete_adapters("probe")
    assert np.allclose(drawn[0], drawn[1], atol=1e-5)
    assert np.abs(drawn[0] - reference).mean() > 1e-4
    assert np.allclose(image(korean_pipe), reference)  # deleting the adapter restored the base UNet


def test_mixing_weights_change_the_image_monotonically_and_unload_restores_it(trained, korean_pipe):
    _, registry = trained
    base = image(korean_pipe)
    distances = []
    for w in (0.0, 0.25, 0.5, 0.75, 1.0):
        lora.apply_loras(korean_pipe, {"ink": 1.0, "wash": w}, registry)
        distances.append(image(korean_pipe))
    ink_alone = distances[0]
    steps = [np.abs(d - ink_alone).mean() for d in distances]
    assert all(b > a for a, b in zip(steps, steps[1:])), steps
    lora.apply_loras(korean_pipe, {}, registry)  # off, still loaded: no reload next time
    assert lora.loaded_adapters(korean_pipe) == ["ink", "wash"]
    assert np.allclose(image(korean_pipe), base, atol=1e-6)
    lora.unload_loras(korean_pipe)
    assert lora.loaded_adapters(korean_pipe) == [] and np.allclose(image(korean_pipe), base, atol=1e-6)


def test_unknown_names_are_refused_listing_the_known_ones(trained, korean_pipe):
    _, registry = trained
    with pytest.raises(lora.UnknownLoraError, match=r"unknown LoRA 'hanbok'; known: ink, wash"):
        lora.apply_loras(korean_pipe, {"ink": 1.0, "hanbok": 0.5}, registry)
    assert lora.loaded_adapters(korean_pipe) == []  # checked before anything was loaded
    with pytest.raises(lora.LoraError, match="must match"):
        registry.add("../etc/passwd", "x")


def test_a_corrupt_file_is_refused_without_touching_the_pipeline(trained, korean_pipe, tmp_path):
    root, registry = trained
    good = (root / "ink" / lora.WEIGHT_NAME).read_bytes()
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(good[: len(good) // 2])
    registry.add("broken", broken)
    lora.apply_loras(korean_pipe, {"ink": 1.0}, registry)
    before = image(korean_pipe)
    with pytest.raises(lora.LoraFileError, match="not a readable safetensors"):
        lora.apply_loras(korean_pipe, {"broken": 1.0}, registry)
    assert lora.loaded_adapters(korean_pipe) == ["ink"] and np.allclose(image(korean_pipe), before)
    lora.unload_loras(korean_pipe)


def test_files_for_another_unet_are_refused_with_the_reason(trained, korean_pipe, tmp_path):
    from safetensors.torch import load_file, save_file

    root, _ = trained
    state = load_file(str(root / "ink" / lora.WEIGHT_NAME))
    renamed = {k.replace("down_blocks.0", "down_blocks.7"): v for k, v in state.items()}
    save_file(renamed, str(tmp_path / "other_arch.safetensors"))
    with pytest.raises(lora.LoraFileError, match="target modules are not in this UNet"):
        lora.read_lora_file(tmp_path / "other_arch.safetensors", korean_pipe.unet)
    wider = {k: (torch.zeros(v.shape[0], v.shape[1] * 2) if "lora.down" in k or "lora_A" in k else v) for k, v in state.items()}
    save_file(wider, str(tmp_path / "wider.safetensors"))
    with pytest.raises(lora.LoraFileError, match="other widths than this UNet"):
        lora.read_lora_file(tmp_path / "wider.safetensors", korean_pipe.unet)
    assert lora.read_lora_file(root / "ink", korean_pipe.unet)["rank"] == 4


def test_registry_file_round_trip_keeps_paths_relative_and_hides_them_from_clients(trained, monkeypatch):
    root, _ = trained
    monkeypatch.chdir(root.parent)  # paths relative to the working directory, as the main job's root is
    cwd_relative = lora.LoraRegistry({"ink": {"path": f"{root.name}/ink/{lora.WEIGHT_NAME}", "trigger": "백묘법"}})
    cwd_relative.save(root / "cwd.json")
    assert lora.LoraRegistry.from_file(root / "cwd.json").get("ink")["path"] == str((root / "ink" / lora.WEIGHT_NAME).resolve())
    data = json.loads((root / "registry.json").read_text(encoding="utf-8"))
    assert data["ink"]["path"] == f"ink/{lora.WEIGHT_NAME}"
    again = lora.LoraRegistry.from_file(root / "registry.json")
    assert again.get("ink")["path"] == str((root / "ink" / lora.WEIGHT_NAME).resolve())
    assert again.public()["ink"] == {"trigger": "백묘법", "description": "", "style": "ink"}
    assert lora.parse_lora_spec(["ink:0.5", "wash"]) == {"ink": 0.5, "wash": 1.0}
    with pytest.raises(lora.LoraError, match="must be a number"):
        lora.parse_lora_spec("ink:strong")


def test_interrupted_training_resumes_to_the_same_lora(korean_pipe, ink_data, tmp_path):
    from safetensors.torch import load_file

    lora.train_lora(tmp_path / "whole", korean_pipe, ink_data, tiny_config(preservation_weight=0.0), name="whole")
    log = lora.train_lora(tmp_path / "cut", korean_pipe, ink_data, tiny_config(preservation_weight=0.0), name="cut", stop_after=3)
    assert log["steps"] == 3 and not (tmp_path / "cut" / lora.WEIGHT_NAME).exists()
    assert lora.loaded_adapters(korean_pipe) == []
    lora.train_lora(tmp_path / "cut", korean_pipe, ink_data, tiny_config(preservation_weight=0.0), name="cut")
    whole, cut = (load_file(str(tmp_path / d / lora.WEIGHT_NAME)) for d in ("whole", "cut"))
    assert whole.keys() == cut.keys() and all(torch.allclose(whole[k], cut[k]) for k in whole)


def test_english_lora_trains_behind_the_clip_teacher_and_applies_behind_the_student(tiny_parts, korean_pipe, tmp_path):
    """The seed's English LoRA: English captions, the English pipeline's own (trainable-by-default) CLIP encoder kept
    frozen; the UNet file then loads behind the Korean student, whose UNet is the same checkpoint's."""
    from diffusers import StableDiffusionPipeline

    english = StableDiffusionPipeline.from_pretrained(tiny_parts / "sd")
    english.set_progress_bar_config(disable=True)
    data = mw.render_style_dataset(tmp_path / "data", mw.WorldConfig(), "ink", 16, "ink wash painting", language="en")
    lora.train_lora(tmp_path / "ink-en", english, data, tiny_config(trigger="ink wash painting", plain_column="caption_en"),
                    name="ink-en")
    assert not any(p.grad is not None for p in english.text_encoder.parameters())
    registry = lora.LoraRegistry({"ink-en": {"path": str(tmp_path / "ink-en" / lora.WEIGHT_NAME), "trigger": "ink wash painting"}})
    base = image(korean_pipe)
    lora.apply_loras(korean_pipe, {"ink-en": 1.0}, registry)
    assert np.abs(image(korean_pipe) - base).mean() > 1e-4
    lora.unload_loras(korean_pipe)


def test_validation_images_are_drawn_every_n_steps(korean_pipe, ink_data, tmp_path):
    cfg = tiny_config(preservation_weight=0.0, validation_prompts=[PROMPT, lora.add_trigger(PROMPT, "백묘법")],
                      loop={"steps": 4, "lr": 0.02, "batch_size": 8, "warmup_steps": 0, "validate_every": 2})
    log = lora.train_lora(tmp_path / "v", korean_pipe, ink_data, cfg, name="v")
    assert sorted(p.name for p in (tmp_path / "v" / "validation").glob("*.png")) == ["step-2.png", "step-4.png"]
    assert [h["step"] for h in log["history"] if "val_loss" in h] == [2, 4]


def test_evaluate_cli_takes_loras_by_name_and_adds_their_trigger(trained, tiny_parts, tiny_student, tmp_path):
    from safetensors.torch import save_file

    from koclip_lib.common import write_json

    root, _ = trained
    clf_dir = tmp_path / "clf"
    clf_dir.mkdir()
    save_file(mw.AttributeClassifier(8).state_dict(), str(clf_dir / "classifier.safetensors"))
    write_json(clf_dir / "classifier.json", {"width": 8, "image_size": 32})
    write_json(clf_dir / "judge.json", {"loader": "koclip_lib.miniworld.world:load_classifier"})
    prompts = mw.write_prompt_tsv(tmp_path / "ko.tsv", mw.sample_scenes(3, 0, mw.WorldConfig()), "ko", 0)
    common = [sys.executable, "-m", "koclip_lib.evaluate", "--pipeline", str(tiny_parts / "sd"), "--text-encoder",
              str(tiny_student), "--prompts", str(prompts), "--classifier", str(clf_dir), "--steps", "2",
              "--lora-registry", str(root / "registry.json")]
    bad = subprocess.run(common + ["--lora", "ink:1.0", "--lora", "nope"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown LoRA 'nope'; known: ink, wash" in bad.stderr
    ok = subprocess.run(common + ["--lora", "ink:0.5", "--trigger"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr[-2000:]
    result = json.loads(ok.stdout.strip().splitlines()[-1])
    assert result["lora"] == ["ink:0.5"] and result["trigger"] and result["scored"]["style"] == 3
    assert abs(sum(result["style_share"].values()) - 1) < 1e-6


def test_colour_breakdown_counts_the_images_of_the_style_table(trained, korean_pipe, tmp_path):
    """The per-colour view counts the table's images: its accuracies, weighted by prompts, give the table's."""
    _, registry = trained
    torch.manual_seed(0)
    classifier = mw.AttributeClassifier(8)
    classifier.image_size = 32
    world = mw.WorldConfig()
    files = {f"ko_{split}": mw.write_prompt_tsv(tmp_path / f"{split}.tsv", mw.sample_scenes(6, 1, world, split=split), "ko", 1)
             for split in ("heldout", "seen")}
    cases = [lora.StyleCase("base", "ko"), lora.StyleCase("ink on", "ko", loras={"ink": 1.0}, trigger=True)]
    kwargs = dict(n_prompts=6, steps=2)
    before = image(korean_pipe)
    evaluated = lora.evaluate_cases({"ko": korean_pipe}, classifier, files, registry, cases, **kwargs)
    table, by_colour = lora.style_table(evaluated), lora.attribute_breakdown(evaluated, "color")
    assert by_colour["prompts"].sum() == 12 and set(by_colour.index) <= set(mw.COLORS)
    for case in cases:
        overall = (by_colour[case.label] * by_colour["prompts"]).sum() / 12
        assert overall == pytest.approx((table.loc[case.label, "held-out color"] + table.loc[case.label, "seen color"]) / 2)
        assert set(by_colour[f"{case.label}: read as"]) <= set(mw.COLORS)
    misread = lora.attribute_breakdown(evaluated, "color", misreads=2)
    for case in cases:  # the wrong reads, counted: as many as the accuracy leaves
        for asked, listed in misread[f"{case.label}: read instead"].items():
            counts = [(m.rsplit(" ", 1)[0], int(m.rsplit(" ", 1)[1])) for m in listed.split(", ") if m]
            assert len(counts) <= 2 and all(c in mw.COLORS and c != asked for c, _ in counts)
            wrong = round((1 - misread.loc[asked, case.label]) * misread.loc[asked, "prompts"])
            assert sum(n for _, n in counts) <= wrong and (wrong == 0) == (not counts)
    assert np.array_equal(image(korean_pipe), before)  # the LoRAs are off again


def test_cache_key_follows_the_settings_in_effect_not_the_defaults_an_adapter_overrides():
    params = load_params(REPO_ROOT / "params" / "mini.yaml")
    adapters = {a["name"]: a for a in params["lora"]["adapters"]}
    assert adapters["ink-en"]["preservation_weight"] == 0.0 and "preservation_weight" not in adapters["ink"]
    def keys():
        return {name: lora.artifact_key(lora.adapter_config(params["lora"], a), a, {"world": params["world"]}, {"model": "base"}, None)
                for name, a in adapters.items()}

    before = keys()
    params["lora"]["defaults"]["preservation_weight"] += 1.0
    after = keys()
    assert after["ink-en"] == before["ink-en"]  # it overrides the weight: same LoRA, nothing to retrain
    assert after["ink"] != before["ink"]
    assert after["ink"]["config"]["preservation_weight"] == before["ink"]["config"]["preservation_weight"] + 1.0


def test_the_service_loads_loras_without_the_training_code():
    """What a running service needs (registry, files, apply_loras: `koclip_lib.adapters`) is apart from what trains."""
    code = ("import sys, koclip_lib.serve; "
            "print(sorted(m for m in ('koclip_lib.lora', 'koclip_lib.train', 'koclip_lib.miniworld') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_kohya_file_carries_kohya_modelspec_fields_with_the_trigger(trained):
    """What kohya / A1111 / ComfyUI show of a LoRA: sd-scripts' `modelspec.*` keys, the trigger as `trigger_phrase`."""
    import datetime

    from safetensors import safe_open

    root, _ = trained
    card = json.loads((root / "ink" / "lora.json").read_text(encoding="utf-8"))
    with safe_open(str(root / "ink" / "ink.kohya.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["modelspec.trigger_phrase"] == "백묘법" and meta["ss_trigger_word"] == "백묘법"
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/lora" and meta["modelspec.implementation"] == "diffusers"
    assert meta["modelspec.sai_model_spec"] == "1.0.1" and meta["modelspec.title"] == "ink"
    assert meta["modelspec.resolution"] == f"{card['resolution']}x{card['resolution']}"
    assert meta["modelspec.description"] == "ink test" and meta["modelspec.license"] == "creativeml-openrail-m"
    assert meta["modelspec.prediction_type"] == "epsilon"
    assert datetime.date.fromisoformat(meta["modelspec.date"]) == datetime.date.today()
    assert "Korean text encoder" in meta["modelspec.usage_hint"]
    assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "8.0"  # the ss_* fields kept


def test_a1111_sidecar_beside_the_kohya_file_gives_the_trigger_as_activation_text(trained):
    from koclip_lib.adapters import a1111_sidecar

    root, _ = trained
    card = json.loads((root / "ink" / "lora.json").read_text(encoding="utf-8"))
    assert card["a1111_file"] == "ink.kohya.json" == a1111_sidecar(root / "ink" / card["kohya_file"]).name
    sidecar = json.loads((root / "ink" / "ink.kohya.json").read_text(encoding="utf-8"))
    assert sidecar["activation text"] == "백묘법" and sidecar["sd version"] == "SD1"
    assert sidecar["description"] == "ink test" and sidecar["preferred weight"] == 1.0
    assert "Korean text encoder" in sidecar["notes"] and "백묘법" in sidecar["notes"]


def test_lora_card_round_trips_through_huggingface_hub_and_its_snippet_draws(trained, tiny_parts, tiny_student, tmp_path):
    import re

    from huggingface_hub import ModelCard

    root, _ = trained
    folder = (root / "ink").resolve()
    card = ModelCard.load(folder / "README.md")
    assert card.data.license == "creativeml-openrail-m" and card.data.base_model == str(tiny_parts / "sd")
    assert card.data.instance_prompt == "백묘법" and card.data.language == "ko" and card.data.library_name == "diffusers"
    assert {"lora", "text-to-image", "stable-diffusion", "diffusers"} <= set(card.data.tags)
    assert "works only behind koclip's Korean text encoder" in card.text and "ink.kohya.json" in card.text
    snippet = re.search(r"```python\n(.*?)```", card.text, re.S).group(1)
    assert f"'path': {str(folder)!r}" in snippet and f"text_encoder={str(tiny_student)!r}" in snippet
    out = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "ink.png").stat().st_size > 0


def test_english_lora_card_takes_licence_and_base_model_from_the_caller(tiny_parts, tmp_path):
    """A LoRA behind SD's own CLIP encoder: English card, no Korean-encoder note; `license` / `base_model` as given."""
    from diffusers import StableDiffusionPipeline
    from huggingface_hub import ModelCard
    from safetensors import safe_open

    english = StableDiffusionPipeline.from_pretrained(tiny_parts / "sd")
    english.set_progress_bar_config(disable=True)
    data = mw.render_style_dataset(tmp_path / "data", mw.WorldConfig(), "ink", 8, "ink wash painting", language="en")
    cfg = tiny_config(trigger="ink wash painting", plain_column="caption_en", preservation_weight=0.0,
                      loop={"steps": 2, "lr": 0.02, "batch_size": 4, "warmup_steps": 0})
    lora.train_lora(tmp_path / "en", english, data, cfg, name="en", license="other", base_model="org/mini-generator")
    card = ModelCard.load(tmp_path / "en" / "README.md")
    assert card.data.license == "other" and card.data.base_model == "org/mini-generator" and card.data.language == "en"
    assert card.data.instance_prompt == "ink wash painting" and "Korean text encoder" not in card.text
    assert f"load_pipeline({str(tiny_parts / 'sd')!r})" in card.text
    with safe_open(str(tmp_path / "en" / "en.kohya.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["modelspec.license"] == "other" and meta["modelspec.trigger_phrase"] == "ink wash painting"
    sidecar = json.loads((tmp_path / "en" / "en.kohya.json").read_text(encoding="utf-8"))
    assert sidecar["activation text"] == "ink wash painting" and sidecar["notes"] == ""


def test_trigger_token_is_saved_beside_the_lora_and_loaded_and_unloaded_with_it(korean_pipe, ink_data, tmp_path):
    """`trigger_token`: the trigger is one token of its own while training and wherever the LoRA is loaded (diffusers'
    textual-inversion file beside the weights); the pipeline is left as it was, and unloading removes the token."""
    from safetensors.torch import load_file

    lora.unload_loras(korean_pipe)  # the module's other LoRAs
    tok = korean_pipe.tokenizer
    unknown = tok.tokenize("백묘법")
    assert unknown == ["<unk>"] * len(unknown)  # the tiny student's tokenizer never saw the word
    base, base_vocab = image(korean_pipe, lora.add_trigger(PROMPT, "백묘법")), len(tok)
    cfg = tiny_config(trigger_token=True, preservation_views=2, trigger_positions=["start", "end"])
    lora.train_lora(tmp_path / "tok", korean_pipe, ink_data, cfg, name="tok")
    assert len(korean_pipe.tokenizer) == base_vocab and korean_pipe.tokenizer.tokenize("백묘법") == unknown
    assert np.array_equal(image(korean_pipe, lora.add_trigger(PROMPT, "백묘법")), base)
    saved = load_file(str(tmp_path / "tok" / lora.TRIGGER_EMBEDDING_NAME))
    width = korean_pipe.text_encoder.get_input_embeddings().weight.shape[1]
    assert list(saved) == ["백묘법"] and saved["백묘법"].shape == (width,)
    card = json.loads((tmp_path / "tok" / "lora.json").read_text(encoding="utf-8"))
    assert card["trigger_embedding_file"] == lora.TRIGGER_EMBEDDING_NAME and card["config"]["trigger_token"]

    registry = lora.LoraRegistry({"tok": {"path": str(tmp_path / "tok" / lora.WEIGHT_NAME), "trigger": "백묘법"}})
    lora.apply_loras(korean_pipe, {"tok": 1.0}, registry)
    assert korean_pipe.tokenizer.tokenize("빨간 별, 백묘법")[-1] == "백묘법"
    row = korean_pipe.tokenizer.convert_tokens_to_ids("백묘법")
    assert torch.equal(korean_pipe.text_encoder.get_input_embeddings().weight[row].detach(), saved["백묘법"])
    on = image(korean_pipe, lora.add_trigger(PROMPT, "백묘법"))
    lora.apply_loras(korean_pipe, {}, registry)  # off: the prompt reads as before any LoRA was loaded
    assert len(korean_pipe.tokenizer) == base_vocab and korean_pipe.tokenizer.tokenize("백묘법") == unknown
    assert np.array_equal(image(korean_pipe, lora.add_trigger(PROMPT, "백묘법")), base)
    lora.apply_loras(korean_pipe, {"tok": 1.0}, registry)
    lora.apply_loras(korean_pipe, {"tok": 0.5}, registry)  # still active: no second token
    assert len(korean_pipe.tokenizer) == base_vocab + 1
    lora.apply_loras(korean_pipe, {"tok": 1.0}, registry)
    assert np.array_equal(image(korean_pipe, lora.add_trigger(PROMPT, "백묘법")), on)
    lora.unload_loras(korean_pipe)
    assert len(korean_pipe.tokenizer) == base_vocab and korean_pipe.tokenizer.tokenize("백묘법") == unknown
    assert np.array_equal(image(korean_pipe, lora.add_trigger(PROMPT, "백묘법")), base)
    assert np.abs(on - base).mean() > 1e-4


def test_paraphrases_keep_the_trigger_out_and_vary_the_caption():
    import random

    rng = random.Random(0)
    captions = ["왼쪽에 빨간 별이 있다", "파란 하트 하나", "가운데에 있는 초록 세모"]
    words = sorted({w for c in captions for w in c.split()})
    out = [lora.paraphrase(c, rng, words, avoid="백묘법") for c in captions * 200]
    assert not any(set(p) & set("백묘법") for p in out)
    assert sum(p != c for p, c in zip(out, captions * 200)) == len(out)  # a word is always put in
    assert len(set(out)) > 500  # hardly two alike
    assert [lora.paraphrase(c, random.Random(1), words) for c in captions] == \
        [lora.paraphrase(c, random.Random(1), words) for c in captions]
    english = lora.paraphrase("a red star on the left", rng, [])
    assert english.isascii() and len(english.split()) >= 5
    # a triggered view keeps every word of its caption (what the image shows) and takes none from other captions
    for caption in captions * 50:
        kept = lora.paraphrase(caption, rng, words, avoid="백묘법", keep_words=True).replace(",", "").split()
        assert all(kept.count(w) >= caption.split().count(w) for w in caption.split())
        assert not set(kept) - set(caption.split()) & (set(words) - set(caption.split()))


def test_preservation_captions_take_words_of_another_column_when_asked(korean_pipe, ink_data, tmp_path):
    """The preservation captions: the captions first, then rounds of paraphrases; with the English captions' words
    (`preservation_words_column`) some paraphrases mix English words into the Korean sentence, without them none does
    (a made-up word is Hangul in a Korean caption). A column the dataset lacks is refused before any training."""
    import random

    data = lora.load_image_dataset(ink_data)
    korean, english = list(data["caption_ko"]), list(data["caption_en"])
    own = sorted({w for c in korean for w in c.split()})
    mixed = own + sorted({w for c in english for w in c.split()})
    latin = lambda caption: any(ch.isascii() and ch.isalpha() for ch in caption)  # noqa: E731
    for words, expect_latin in ((own, False), (mixed, True)):
        out = lora.preservation_captions(korean, 3, random.Random(0), words, avoid="백묘법")
        assert len(out) == 3 * len(korean) and out[:len(korean)] == korean
        assert any(latin(p) for p in out[len(korean):]) == expect_latin
    with pytest.raises(lora.LoraError, match="no caption column 'caption_fr'"):
        lora.train_lora(tmp_path / "refused", korean_pipe, ink_data,
                        tiny_config(preservation_words_column="caption_fr"))


def test_frame_evaluation_scores_every_frame_and_names_the_worst(trained, korean_pipe, tmp_path):
    _, registry = trained
    torch.manual_seed(0)
    classifier = mw.AttributeClassifier(8)
    classifier.image_size = 32
    frames_file = mw.write_frame_prompts(tmp_path / "ko_frames.tsv", "ko", mw.WorldConfig(), 2, 0)
    cases = [lora.StyleCase("base", "ko"), lora.StyleCase("ink on", "ko", loras={"ink": 1.0}, trigger=True)]
    frames = lora.evaluate_frames({"ko": korean_pipe}, classifier, frames_file, registry, cases, steps=2)
    n_frames = len(mw.KO_HELDOUT_FRAMES)
    assert len(frames) == 2 * n_frames * 2 and (frames["images"] == 2).all()
    assert set(frames["frame"]) == set(mw.KO_HELDOUT_FRAMES) and set(frames["pairs"]) == {"held-out", "seen"}
    summary = lora.frame_summary(frames)
    for case in ("base", "ink on"):
        per_frame = frames[frames.case == case].groupby("frame")["ink rate"].mean()
        assert summary.loc[case, "worst frame ink rate"] == pytest.approx(per_frame.max())
        assert per_frame[summary.loc[case, "worst frame"]] == pytest.approx(per_frame.max())
        held = frames[(frames.case == case) & (frames.pairs == "held-out")]
        assert summary.loc[case, "held-out color"] == pytest.approx(held["color"].mean())
    plain = tmp_path / "plain.tsv"  # a prompt file without the frame columns is refused before any image is drawn
    plain.write_text("prompt\tcolor\tshape\n빨간 별\tred\tstar\n", encoding="utf-8")
    with pytest.raises(evaluate.PromptFileError, match=r"plain.tsv:1: missing column\(s\) frame, family, pairs"):
        lora.evaluate_frames({"ko": korean_pipe}, classifier, plain, registry, cases, steps=2)


def test_frame_rates_weigh_each_kind_of_pairs_by_its_images():
    import pandas as pd

    frames = pd.DataFrame([
        {"case": "on", "frame": "f", "family": "d", "pairs": "held-out", "images": 1, "ink rate": 1.0, "color": 0.0, "shape": 1.0},
        {"case": "on", "frame": "f", "family": "d", "pairs": "seen", "images": 3, "ink rate": 0.0, "color": 1.0, "shape": 1.0},
        {"case": "on", "frame": "g", "family": "d", "pairs": "seen", "images": 2, "ink rate": 0.5, "color": 0.5, "shape": 1.0}])
    rates = lora.frame_rates(frames)
    assert rates.loc[("d", "f", "on")].tolist() == [0.25, 0.75]
    summary = lora.frame_summary(frames)
    assert summary.loc["on", "worst frame"] == "g" and summary.loc["on", "worst frame ink rate"] == 0.5


def test_learned_trigger_token_trains_its_row_through_the_text_encoder(korean_pipe, ink_data, tmp_path):
    """`learn_trigger_token`: the row moves from its random start, the saved row is the learnt one, and the states the
    training encodes through it are the pipeline's own for the same row."""
    from safetensors.torch import load_file

    lora.unload_loras(korean_pipe)
    start = lora.add_trigger_token(korean_pipe, "백묘법", seed=0)
    token_id = korean_pipe.tokenizer.convert_tokens_to_ids("백묘법")
    texts = ["왼쪽에 빨간 별이 있다, 백묘법", "백묘법, 파란 하트"]
    with torch.no_grad():
        ours = lora._states_with_token(korean_pipe, texts, token_id, start)
        pipeline = korean_pipe.encode_prompt(texts, "cpu", 1, False)[0]
    assert torch.allclose(ours, pipeline, atol=1e-5)
    korean_pipe.unload_textual_inversion("백묘법")

    cfg = tiny_config(trigger_token=True, learn_trigger_token=True, trigger_positions=["end"])
    lora.train_lora(tmp_path / "learned", korean_pipe, ink_data, cfg, name="learned")
    learned = load_file(str(tmp_path / "learned" / lora.TRIGGER_EMBEDDING_NAME))["백묘법"]
    assert learned.shape == start.shape and (learned - start).abs().max() > 1e-3
    assert korean_pipe.tokenizer.tokenize("백묘법") == ["<unk>"] * 3 or "백묘법" not in korean_pipe.tokenizer.get_vocab()


def test_trigger_views_a_fixed_norm_row_and_the_english_style_prompt(korean_pipe, ink_data, tiny_parts, tmp_path):
    """`trigger_views` paraphrases the triggered captions, `trigger_token_fixed_norm` keeps the learnt row at its start's
    norm, and `style_prompt_en` adds the base UNet's prediction for the style named in English as a target: the LoRA
    then differs from one trained on the images alone; without the base pipeline the setting is refused."""
    from safetensors.torch import load_file

    from koclip_lib.evaluate import load_pipeline

    lora.unload_loras(korean_pipe)
    start = lora.add_trigger_token(korean_pipe, "백묘법", seed=0)
    korean_pipe.unload_textual_inversion("백묘법")
    common = dict(trigger_token=True, learn_trigger_token=True, trigger_token_fixed_norm=True, trigger_views=2,
                  trigger_positions=["start", "end"])
    with pytest.raises(lora.LoraError, match="style_prompt_en"):
        lora.train_lora(tmp_path / "refused", korean_pipe, ink_data, tiny_config(style_prompt_en="{}, ink wash style"))
    base = load_pipeline(tiny_parts / "sd", device="cpu")
    lora.train_lora(tmp_path / "named", korean_pipe, ink_data, tiny_config(style_prompt_en="{}, ink wash style", **common),
                    name="named", base_pipe=base)
    lora.train_lora(tmp_path / "images", korean_pipe, ink_data, tiny_config(**common), name="images")
    learned = load_file(str(tmp_path / "named" / lora.TRIGGER_EMBEDDING_NAME))["백묘법"]
    assert abs(float(learned.norm()) - float(start.norm())) < 1e-3 * float(start.norm())
    assert (learned / learned.norm() - start / start.norm()).abs().max() > 1e-4  # the direction was learnt
    named, images = (load_file(str(tmp_path / d / lora.WEIGHT_NAME)) for d in ("named", "images"))
    assert named.keys() == images.keys()
    assert max(float((named[k] - images[k]).abs().max()) for k in named) > 1e-4


def test_states_noise_trains_on_perturbed_text_states(korean_pipe, ink_data, tmp_path):
    """`states_noise` adds Gaussian noise to the states the trained UNet reads (triggered and preservation captions):
    the LoRA then differs from one trained on the states as encoded, from the same seed."""
    from safetensors.torch import load_file

    lora.unload_loras(korean_pipe)
    for name, noise in (("clean", 0.0), ("noisy", 0.5)):
        lora.train_lora(tmp_path / name, korean_pipe, ink_data, tiny_config(states_noise=noise), name=name)
    clean, noisy = (load_file(str(tmp_path / d / lora.WEIGHT_NAME)) for d in ("clean", "noisy"))
    assert clean.keys() == noisy.keys()
    assert max(float((clean[k] - noisy[k]).abs().max()) for k in clean) > 1e-4


def test_prior_images_draws_class_images_for_the_first_images_only(korean_pipe, ink_data, tmp_path):
    """`prior_images`: the base pipeline draws class images for the first N images' captions (x `preservation_views`)
    only, and preservation trains on those; without it, one for every image and view."""
    from safetensors.torch import load_file

    lora.unload_loras(korean_pipe)
    n = len(lora.load_image_dataset(ink_data))
    cards, weights = {}, {}
    for name, cap in (("every", None), ("first8", 8)):
        lora.train_lora(tmp_path / name, korean_pipe, ink_data, tiny_config(prior_images=cap, preservation_views=2),
                        name=name)
        cards[name] = json.loads((tmp_path / name / "lora.json").read_text(encoding="utf-8"))
        weights[name] = load_file(str(tmp_path / name / lora.WEIGHT_NAME))
    assert cards["every"]["class_images"] == 2 * n and cards["first8"]["class_images"] == 2 * 8
    assert cards["every"]["images"] == cards["first8"]["images"] == n
    assert max(float((weights["every"][k] - weights["first8"][k]).abs().max()) for k in weights["every"]) > 1e-4
    with pytest.raises(lora.LoraError, match="prior_images=0"):
        lora.train_lora(tmp_path / "none", korean_pipe, ink_data, tiny_config(prior_images=0), name="none")


def test_trigger_states_weight_pulls_the_learnt_row_toward_the_style_named_in_english(korean_pipe, ink_data, tiny_parts,
                                                                                      tmp_path):
    """`trigger_states_weight` adds the text encoder's distance, for the triggered captions, to the base text encoder's
    states for `style_prompt_en`: the row learnt with it says the style closer to how the base says it than the row
    learnt through the UNet alone; without a learnt row the setting is refused."""
    from safetensors.torch import load_file

    from koclip_lib.evaluate import load_pipeline

    lora.unload_loras(korean_pipe)
    base = load_pipeline(tiny_parts / "sd", device="cpu")
    named = dict(style_prompt_en="{}, ink wash style", trigger_positions=["end"])
    with pytest.raises(lora.LoraError, match="trigger_states_weight"):
        lora.train_lora(tmp_path / "refused", korean_pipe, ink_data, tiny_config(trigger_states_weight=1.0, **named),
                        base_pipe=base)
    rows = {}
    for weight in (0.0, 50.0):
        out = tmp_path / f"w{weight:g}"
        log = lora.train_lora(out, korean_pipe, ink_data, tiny_config(trigger_token=True, learn_trigger_token=True,
                                                                      trigger_states_weight=weight, **named),
                              name=f"w{weight:g}", base_pipe=base)
        assert ("trigger_states" in log["history"][-1]) == bool(weight)
        rows[weight] = load_file(str(out / lora.TRIGGER_EMBEDDING_NAME))["백묘법"]
    data = lora.load_image_dataset(ink_data)
    captions = [lora.add_trigger(c, "백묘법", "end") for c in data["caption_ko"]]
    target = lora._text_states(base, ["{}, ink wash style".format(c) for c in data["caption_en"]],
                               lora._unconditional_states(base)[0])
    lora.add_trigger_token(korean_pipe, "백묘법", seed=0)
    token_id = korean_pipe.tokenizer.convert_tokens_to_ids("백묘법")
    try:
        with torch.no_grad():
            distance = {w: float(torch.nn.functional.mse_loss(
                lora._states_with_token(korean_pipe, captions, token_id, row), target[:, :77])) for w, row in rows.items()}
    finally:
        korean_pipe.unload_textual_inversion("백묘법")
    assert distance[50.0] < distance[0.0]


def test_trigger_base_weight_keeps_the_learnt_row_out_of_the_base_unets_reading(korean_pipe, ink_data, tmp_path):
    """`trigger_base_weight` adds the frozen base UNet's distance, reading a triggered caption, from its own prediction
    for the caption without the trigger: the row learnt with it moves the base's prediction less than the row learnt
    without it; without a learnt row the setting is refused."""
    from safetensors.torch import load_file

    lora.unload_loras(korean_pipe)
    with pytest.raises(lora.LoraError, match="trigger_base_weight"):
        lora.train_lora(tmp_path / "refused", korean_pipe, ink_data, tiny_config(trigger_base_weight=1.0))
    rows = {}
    for weight in (0.0, 100.0):
        out = tmp_path / f"w{weight:g}"
        log = lora.train_lora(out, korean_pipe, ink_data, tiny_config(trigger_token=True, learn_trigger_token=True,
                                                                      trigger_positions=["end"],
                                                                      trigger_base_weight=weight),
                              name=f"w{weight:g}")
        assert ("trigger_base" in log["history"][-1]) == bool(weight)
        rows[weight] = load_file(str(out / lora.TRIGGER_EMBEDDING_NAME))["백묘법"]
    plain = list(lora.load_image_dataset(ink_data)["caption_ko"])
    for position in ("start", "end"):
        assert lora.drop_trigger(lora.add_trigger(plain[0], "백묘법", position), "백묘법") == plain[0]
    lora.add_trigger_token(korean_pipe, "백묘법", seed=0)
    token_id = korean_pipe.tokenizer.convert_tokens_to_ids("백묘법")
    unet = korean_pipe.unet
    gen = torch.Generator().manual_seed(0)
    x_t = torch.randn((len(plain), unet.config.in_channels, unet.config.sample_size, unet.config.sample_size), generator=gen)
    t = torch.full((len(plain),), 500)
    try:
        with torch.no_grad():
            unheard = unet(x_t, t, encoder_hidden_states=korean_pipe.encode_prompt(plain, "cpu", 1, False)[0]).sample
            moved = {w: float(torch.nn.functional.mse_loss(unet(x_t, t, encoder_hidden_states=lora._states_with_token(
                korean_pipe, [lora.add_trigger(c, "백묘법", "end") for c in plain], token_id, row)).sample, unheard))
                for w, row in rows.items()}
    finally:
        korean_pipe.unload_textual_inversion("백묘법")
    assert moved[100.0] < moved[0.0]


def test_trigger_taught_to_the_text_encoder_moves_triggered_captions_only_and_loads_with_the_lora(
        korean_pipe, ink_data, tiny_parts, tmp_path):
    """`text_encoder_target_modules`: before the UNet's LoRA, a LoRA on the text encoder (and the trigger's row) learns
    that a triggered caption reads as itself without the trigger plus what `style_prompt_en` adds in the base text
    encoder, an untriggered one as before. The pipeline is left as it was; the file beside the weights is loaded,
    switched off and unloaded with the LoRA, into the Korean student only (behind CLIP the UNet's part applies); a file
    that does not fit the student is refused before anything is loaded."""
    from safetensors.torch import load_file, save_file

    from koclip_lib.evaluate import load_pipeline

    lora.unload_loras(korean_pipe)
    base = load_pipeline(tiny_parts / "sd", device="cpu")
    taught = dict(text_encoder_target_modules=["query", "key", "value", "dense", "proj_in", "proj_out"],
                  text_encoder_rank=4, text_loop={"steps": 40, "lr": 0.01, "batch_size": 8, "warmup_steps": 0},
                  style_prompt_en="{}, ink wash style", trigger_positions=["end"], preservation_views=2)
    with pytest.raises(lora.LoraError, match="text_encoder_target_modules"):
        lora.train_lora(tmp_path / "refused", korean_pipe, ink_data, tiny_config(**taught), base_pipe=base)
    with pytest.raises(lora.LoraError, match="trigger_base_weight"):
        lora.train_lora(tmp_path / "refused", korean_pipe, ink_data,
                        tiny_config(trigger_token=True, learn_trigger_token=True, trigger_base_weight=1.0, **taught),
                        base_pipe=base)
    triggered = lora.add_trigger(PROMPT, "백묘법")
    before, vocab = image(korean_pipe, triggered), len(korean_pipe.tokenizer)
    log = lora.train_lora(tmp_path / "taught", korean_pipe, ink_data,
                          tiny_config(trigger_token=True, learn_trigger_token=True, **taught), name="taught", base_pipe=base)
    assert not hasattr(korean_pipe.text_encoder, "peft_config") and len(korean_pipe.tokenizer) == vocab
    assert np.array_equal(image(korean_pipe, triggered), before)
    card = log["card"]
    assert card["text_encoder_file"] == lora.TEXT_ENCODER_LORA_NAME and card["text_encoder_steps"] == 40
    assert lora.TEXT_ENCODER_LORA_NAME in (tmp_path / "taught" / "README.md").read_text(encoding="utf-8")
    weights = load_file(str(tmp_path / "taught" / lora.TEXT_ENCODER_LORA_NAME))
    assert weights and all(".lora_A." in k or ".lora_B." in k for k in weights)

    data = lora.load_image_dataset(ink_data)
    plain, english = list(data["caption_ko"]), list(data["caption_en"])
    said = [lora.add_trigger(c, "백묘법") for c in plain]

    def states(texts):
        with torch.no_grad():
            return korean_pipe.encode_prompt(texts, "cpu", 1, False)[0][:, :77]

    own = states(plain)
    with torch.no_grad():
        empty = lora._unconditional_states(base)[0]
        target = own + (lora._text_states(base, [f"{e}, ink wash style" for e in english], empty)
                        - lora._text_states(base, english, empty))[:, :77]
    registry = lora.LoraRegistry({"taught": {"path": str(tmp_path / "taught" / lora.WEIGHT_NAME), "trigger": "백묘법"}})
    lora.apply_loras(korean_pipe, {"taught": 1.0}, registry)
    loaded = sorted(getattr(korean_pipe.text_encoder, "peft_config", {}))
    to_target, kept = float(torch.nn.functional.mse_loss(states(said), target)), states(plain)
    lora.apply_loras(korean_pipe, {}, registry)  # off: the text encoder reads every caption as before
    assert torch.equal(states(plain), own)
    untaught = float(torch.nn.functional.mse_loss(states(said), target))  # the word as the pieces it splits into
    lora.unload_loras(korean_pipe)
    assert loaded == ["taught"] and not hasattr(korean_pipe.text_encoder, "peft_config")
    assert to_target < untaught
    lora.apply_loras(base, {"taught": 1.0}, registry)  # behind CLIP: the UNet's part only, as trained for the student
    assert lora.loaded_adapters(base) == ["taught"] and not hasattr(base.text_encoder, "peft_config")
    lora.unload_loras(base)
    assert float(torch.nn.functional.mse_loss(kept, own)) < to_target

    other = tmp_path / "other"
    other.mkdir()
    for name in (lora.WEIGHT_NAME, lora.TRIGGER_EMBEDDING_NAME):
        (other / name).write_bytes((tmp_path / "taught" / name).read_bytes())
    key = next(k for k in weights if ".lora_A." in k)
    modules = json.dumps(taught["text_encoder_target_modules"])
    save_file({**weights, key: torch.zeros(4, 999)}, str(other / lora.TEXT_ENCODER_LORA_NAME),
              metadata={"format": "pt", "text_encoder": "KoreanTextEncoder", "r": "4", "lora_alpha": "4",
                        "target_modules": modules})
    bad = lora.LoraRegistry({"other": {"path": str(other / lora.WEIGHT_NAME), "trigger": "백묘법"}})
    with pytest.raises(lora.LoraFileError, match="needs"):
        lora.apply_loras(korean_pipe, {"other": 1.0}, bad)
    assert not lora.loaded_adapters(korean_pipe) and not hasattr(korean_pipe.text_encoder, "peft_config")

"""koclip_lib.standins: every stand-in opens with the real loading classes and runs; the tokenizer is CLIP's own."""
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from koclip_lib import standins

SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
DREAMSHAPER = "Lykon/dreamshaper-7"
SD21 = "stabilityai/stable-diffusion-2-1"
SDXL = "stabilityai/stable-diffusion-xl-base-1.0"
CAT_IDS = [49406, 320, 1125, 539, 320, 2368, 49407]  # "a photo of a cat" with openai/clip-vit-large-patch14


@pytest.fixture(scope="session")
def hub(tmp_path_factory):
    out = tmp_path_factory.mktemp("standins")
    start = time.perf_counter()
    record = standins.write_standins(out, seed=0)
    return {"dir": out, "record": record, "seconds": time.perf_counter() - start}


def test_every_standin_is_written_and_recorded(hub):
    record = json.loads((hub["dir"] / "standins.json").read_text(encoding="utf-8"))
    assert record == hub["record"]
    assert list(record["standins"]) == list(standins.STANDINS)
    for key, entry in record["standins"].items():
        assert (hub["dir"] / entry["path"]).is_dir(), key
    assert record["standins"]["sdxl"]["components"]["text_encoder_2"] == "CLIPTextModelWithProjection"
    assert record["standins"]["sd15"]["components"]["safety_checker"] == "StableDiffusionSafetyChecker"
    assert record["standins"]["roberta"]["components"] == {"config": "RobertaModel", "tokenizer": "BertTokenizer"}
    assert not list(hub["dir"].glob(".standins-tmp*"))  # scratch folders are gone
    assert hub["seconds"] < 60, hub["seconds"]


@pytest.mark.parametrize("folder,subfolder,pad_id", [(SD15, "tokenizer", 49407), (DREAMSHAPER, "tokenizer", 49407),
                                                      (SD21, "tokenizer", 0), (SDXL, "tokenizer", 49407), (SDXL, "tokenizer_2", 0)])
def test_sd_tokenizers_are_the_real_clip_tokenizer(hub, tmp_path, folder, subfolder, pad_id):
    from transformers import AutoTokenizer, CLIPTokenizer, CLIPTokenizerFast

    path = hub["dir"] / folder / subfolder
    ids = CLIPTokenizer.from_pretrained(path)("a photo of a cat", padding="max_length").input_ids
    assert ids == CAT_IDS + [pad_id] * (77 - len(CAT_IDS))  # SD 1.5 pads with <|endoftext|>, OpenCLIP ones with "!"
    for cls in (CLIPTokenizerFast, AutoTokenizer):
        assert cls.from_pretrained(path)("a photo of a cat", padding="max_length").input_ids == ids, cls
    # the classic files (as older loaders read them, without tokenizer.json) give the same ids as tokenizer.json
    classic = tmp_path / "classic"
    classic.mkdir()
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copy(path / name, classic / name)
    text = "Two dogs playing in the snow, photorealistic; 8k!"
    assert (CLIPTokenizer.from_pretrained(classic)(text).input_ids
            == CLIPTokenizer.from_pretrained(path)(text).input_ids)
    assert len(json.loads((path / "vocab.json").read_text(encoding="utf-8"))) == 49408


def test_missing_bpe_file_gives_a_one_line_fix(monkeypatch):
    monkeypatch.setattr(standins.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps open-clip-torch"):
        standins.clip_bpe_path()


def _generate(pipe, steps=2, **kwargs):
    return pipe("a photo of a cat", num_inference_steps=steps, generator=torch.Generator().manual_seed(0),
                output_type="np", **kwargs)


@pytest.mark.parametrize("folder,scheduler", [(SD15, "PNDMScheduler"), (DREAMSHAPER, "DPMSolverMultistepScheduler")])
def test_sd1_checkpoints_open_and_generate(hub, folder, scheduler):
    from diffusers import DiffusionPipeline, StableDiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(hub["dir"] / folder)
    assert type(pipe) is StableDiffusionPipeline and type(pipe.scheduler).__name__ == scheduler
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size == standins.SD15_TEXT_WIDTH
    assert pipe.vae_scale_factor == 8 and pipe.vae.config.scaling_factor == 0.18215
    assert pipe.feature_extractor.crop_size == {"height": 224, "width": 224}
    out = _generate(pipe)
    side = pipe.unet.config.sample_size * pipe.vae_scale_factor
    assert out.images.shape == (1, side, side, 3) and np.isfinite(out.images).all()
    assert out.nsfw_content_detected == [False]  # the safety checker ran and passed the image through


def test_sd15_scheduler_is_sd15s_and_fine_tune_shares_only_the_vae(hub):
    config = json.loads((hub["dir"] / SD15 / "scheduler" / "scheduler_config.json").read_text())
    expected = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
                "skip_prk_steps": True, "steps_offset": 1, "set_alpha_to_one": False, "clip_sample": False,
                "prediction_type": "epsilon"}
    assert {k: config[k] for k in expected} == expected
    same = {part: (hub["dir"] / SD15 / part / name).read_bytes() == (hub["dir"] / DREAMSHAPER / part / name).read_bytes()
            for part, name in (("vae", "diffusion_pytorch_model.safetensors"), ("unet", "diffusion_pytorch_model.safetensors"),
                               ("text_encoder", "model.safetensors"))}
    assert same == {"vae": True, "unet": False, "text_encoder": False}


def test_sd15_stand_in_is_toy_sized(hub):
    """Every test and notebook on the stand-ins draws with it: a few million parameters where SD 1.5 has about a
    billion (how fast it draws is the benchmark's to say, not a test's)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(hub["dir"] / SD15)
    sizes = {name: sum(p.numel() for p in getattr(pipe, name).parameters()) for name in ("unet", "vae", "text_encoder")}
    assert sum(sizes.values()) < 5_000_000, sizes
    assert pipe.unet.config.sample_size == standins.SAMPLE_SIZE


def test_sd21_is_an_sd2_layout_and_generates(hub):
    from diffusers import DDIMScheduler, DiffusionPipeline, StableDiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(hub["dir"] / SD21)
    assert type(pipe) is StableDiffusionPipeline and isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.scheduler.config.prediction_type == "v_prediction" and pipe.unet.config.use_linear_projection
    assert pipe.text_encoder.config.hidden_size == pipe.unet.config.cross_attention_dim == standins.SD21_TEXT_WIDTH
    assert pipe.safety_checker is None
    assert _generate(pipe).images.shape[-1] == 3


def test_sdxl_opens_as_sdxl_and_generates(hub):
    from diffusers import DiffusionPipeline, StableDiffusionXLPipeline

    pipe = DiffusionPipeline.from_pretrained(hub["dir"] / SDXL)
    assert type(pipe) is StableDiffusionXLPipeline
    assert pipe.unet.config.addition_embed_type == "text_time"
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    assert pipe.tokenizer_2.pad_token == "!"
    images = _generate(pipe).images
    assert images.shape == (1, 128, 128, 3) and np.isfinite(images).all()


def test_sd2_and_sdxl_refuse_an_sd15_student(hub):
    from koclip_lib.distill import KoreanTextEncoderConfig
    from koclip_lib.pipeline import IncompatibleCheckpointError, check_compatibility

    width = json.loads((hub["dir"] / SD15 / "text_encoder" / "config.json").read_text())["hidden_size"]
    config = KoreanTextEncoderConfig(teacher_width=width, teacher=f"{SD15}/text_encoder")
    check_compatibility(hub["dir"] / SD15, config)  # the student's own checkpoint and its fine-tune pass
    check_compatibility(hub["dir"] / DREAMSHAPER, config)
    with pytest.raises(IncompatibleCheckpointError, match=rf"width {standins.SD21_TEXT_WIDTH}.*width {width}"):
        check_compatibility(hub["dir"] / SD21, config)
    with pytest.raises(IncompatibleCheckpointError, match="SDXL"):
        check_compatibility(hub["dir"] / SDXL, config)


def test_roberta_opens_like_klue(hub):
    from transformers import AutoModel, AutoTokenizer, RobertaModel

    folder = hub["dir"] / "klue" / "roberta-small"
    assert json.loads((folder / "tokenizer_config.json").read_text())["tokenizer_class"] == "BertTokenizer"
    tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder)
    assert isinstance(model, RobertaModel)
    assert [tokenizer.convert_tokens_to_ids(t) for t in ("[CLS]", "[PAD]", "[SEP]", "[UNK]", "[MASK]")] == [0, 1, 2, 3, 4]
    assert (model.config.pad_token_id, model.config.bos_token_id, model.config.eos_token_id) == (1, 0, 2)
    enc = tokenizer(["거미가 곤충이 아니라는 것은 잘 알려진 사실이야.", "누구?"], padding=True, return_tensors="pt")
    assert enc.input_ids[0, 0] == 0 and tokenizer.unk_token_id not in enc.input_ids[0].tolist()
    assert enc.input_ids[1, -1] == 1  # padded with [PAD]
    assert "거미" in tokenizer.convert_ids_to_tokens(enc.input_ids[0])  # Hangul kept whole, not split into jamo
    with torch.no_grad():
        states = model(**enc).last_hidden_state
    assert states.shape == (2, enc.input_ids.shape[1], 32)


@pytest.mark.parametrize("folder,source_lang,text", [("Helsinki-NLP/opus-mt-ko-en", "ko", "안녕하세요"),
                                                     ("Helsinki-NLP/opus-mt-tc-big-en-ko", "en", "a cat sitting on a chair")])
def test_marian_translators_open_and_generate(hub, folder, source_lang, text):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, MarianMTModel, MarianTokenizer

    from koclip_lib.translate import Translator

    path = hub["dir"] / folder
    assert {p.name for p in path.iterdir()} >= {"source.spm", "target.spm", "vocab.json", "tokenizer_config.json",
                                                 "generation_config.json", "config.json", "model.safetensors"}
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModelForSeq2SeqLM.from_pretrained(path)
    assert isinstance(tokenizer, MarianTokenizer) and isinstance(model, MarianMTModel)
    assert tokenizer.source_lang == source_lang
    ids = model.generate(**tokenizer([text], return_tensors="pt"), max_new_tokens=8)
    assert ids.shape[0] == 1 and ids[0, 0] == model.config.decoder_start_token_id
    assert all(Translator.from_pretrained(path).translate([text, "빨간 원"], max_new_tokens=8))


def test_blip_captions_an_image(hub):
    from PIL import Image
    from transformers import AutoProcessor, BlipForConditionalGeneration, BlipProcessor

    path = hub["dir"] / "Salesforce" / "blip-image-captioning-base"
    processor, model = BlipProcessor.from_pretrained(path), BlipForConditionalGeneration.from_pretrained(path)
    assert type(AutoProcessor.from_pretrained(path)) is BlipProcessor
    assert processor.tokenizer.bos_token == "[DEC]" and model.config.text_config.bos_token_id == processor.tokenizer.bos_token_id
    image = Image.open(next(iter(sorted((hub["dir"] / "images" / "baekmyo").iterdir())))).convert("RGB")
    inputs = processor(images=[image], return_tensors="pt")
    assert inputs.pixel_values.shape == (1, 3, 32, 32)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=6)
    caption = processor.batch_decode(out, skip_special_tokens=True)[0].strip()
    assert caption and not caption.startswith("[")


def test_xlsx_holds_the_real_tatoeba_pairs(hub, tmp_path):
    import openpyxl

    from koclip_lib.corpus import BuildConfig, build_corpus, read_xlsx, token_counter

    path = hub["dir"] / "aihub" / "ko-en.xlsx"
    sheet = openpyxl.load_workbook(path, read_only=True).worksheets[0]
    assert list(next(sheet.iter_rows(values_only=True))) == ["ID", "대분류", "소분류", "원문", "번역문"]
    rows = list(read_xlsx(path))
    pairs = standins.tatoeba_pairs()
    assert len(pairs) == 400 and all("tatoeba.org #" in p["attribution"] for p in pairs)
    got = {(r.ko, r.en) for r in rows}
    assert {(p["ko"], p["en"]) for p in pairs} <= got and ("가.", "Go.") in got
    assert sum(1 for r in rows if not r.ko) == 3  # the malformed rows, 원문 empty
    count = token_counter(hub["dir"] / SD15 / "tokenizer")
    long_rows = [r for r in rows if r.ko and count(r.en) > 77]
    assert len(long_rows) >= 4, len(long_rows)
    summary = build_corpus([str(path)], tmp_path / "corpus", BuildConfig(en_max_tokens=77, progress=False),
                           count_en_tokens=count)
    assert summary["dropped"]["en_over_token_limit"] == len(long_rows)
    assert summary["dropped"]["empty"] == 3
    assert summary["kept"] > 300


def test_image_folder_is_small_grey_ink_drawings(hub):
    from PIL import Image

    files = sorted((hub["dir"] / "images" / "baekmyo").iterdir())
    assert len(files) == 12 and all(f.suffix == ".png" for f in files)
    arrays = [np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) for f in files]
    for a in arrays:
        assert a.shape == (64, 64, 3)
        assert a.min() < 150 < a.max()  # dark ink on light paper
        assert np.abs(a[..., 0] - a[..., 1]).max() < 10  # grey, not coloured
    assert len({a.tobytes() for a in arrays}) == 12


def test_same_seed_rewrites_byte_identical_weights_cleanly(hub, tmp_path):
    keys = ["sd15", "roberta", "marian-ko-en", "blip"]
    standins.write_standins(tmp_path, seed=0, only=keys)
    (tmp_path / SD15 / "stale.txt").write_text("from an earlier run")
    record = standins.write_standins(tmp_path, seed=0, only=keys)  # idempotent: the folders are replaced whole
    assert not (tmp_path / SD15 / "stale.txt").exists() and list(record["standins"]) == keys
    for key in keys:
        folder = standins.STANDINS[key][0]
        weights = sorted(p.relative_to(tmp_path) for p in (tmp_path / folder).rglob("*.safetensors"))
        assert weights
        assert all((tmp_path / w).read_bytes() == (hub["dir"] / w).read_bytes() for w in weights), key
    other = standins.write_standins(tmp_path / "seed1", seed=1, only=["sd15"])
    unet = Path(SD15) / "unet" / "diffusion_pytorch_model.safetensors"
    assert other["seed"] == 1 and (tmp_path / "seed1" / unet).read_bytes() != (hub["dir"] / unet).read_bytes()


def test_rejects_unknown_keys_and_never_writes_outside_out_dir(tmp_path):
    with pytest.raises(ValueError, match="unknown stand-ins"):
        standins.write_standins(tmp_path, only=["sd3"])
    with pytest.raises(ValueError, match="not inside"):
        standins._replace_inside(tmp_path / "hub", tmp_path / "elsewhere", lambda d: None)
    assert not (tmp_path / "elsewhere").exists()


def test_real_size_stand_ins_have_sd15s_parameter_counts():
    """`--real-size` builds SD 1.5's UNet, VAE and CLIP ViT-L/14 text encoder at their hub checkpoints' exact parameter
    counts (built on the meta device: no memory, no weights)."""
    text = standins.REAL.text
    with torch.device("meta"):
        unet = standins.sd_unet(text["width"], sizes=standins.REAL)
        vae = standins.sd_vae(sizes=standins.REAL)
        encoder = standins.clip_text_model(text["width"], "quick_gelu", text["width"], layers=text["layers"],
                                           heads=text["heads"], intermediate=text["intermediate"])
    counts = [sum(p.numel() for p in m.parameters()) for m in (unet, vae, encoder)]
    assert counts == [859_520_964, 83_653_863, 123_060_480]  # stable-diffusion-v1-5's unet, vae, text_encoder
    assert unet.config.sample_size == 64 and unet.config.cross_attention_dim == 768

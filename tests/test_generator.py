"""The English generator's building blocks on tiny random models (the trained ones are checked by the notebooks)."""

import torch
from diffusers import StableDiffusionPipeline

from koclip_lib.miniworld import generator as g


def test_english_tokenizer_breaks_korean_into_bytes(tiny_parts):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_parts / "teacher")
    assert tok.model_max_length == 77
    english = tok.convert_ids_to_tokens(tok("a red star on the left").input_ids)
    korean = tok.convert_ids_to_tokens(tok("왼쪽에 빨간 별이 있다").input_ids)
    assert len(english) <= 12  # about one token per word (a 300-token vocabulary still splits a few)
    assert len(korean) >= 3 * len("왼쪽에빨간별이있다")  # one token per UTF-8 byte, as in CLIP
    assert all(len(t) == 1 for t in korean[1:-1] if t != "Ġ")
    padded = g.tokenize(tok, ["a red star", ""])["input_ids"]
    assert padded.shape == (2, 77) and (padded[1, :2] == torch.tensor([tok.bos_token_id, tok.eos_token_id])).all()


def test_teacher_pools_at_the_end_token(tiny_parts):
    """CLIPTextModel pools at the first end-of-text token: padding to 77 must not change the pooled vector."""
    from transformers import AutoTokenizer, CLIPTextModel

    tok = AutoTokenizer.from_pretrained(tiny_parts / "teacher")
    model = CLIPTextModel.from_pretrained(tiny_parts / "teacher").eval()
    with torch.no_grad():
        short = model(**g.tokenize(tok, ["a blue heart"], padding="longest"))
        full = model(**g.tokenize(tok, ["a blue heart"]))
    torch.testing.assert_close(short.pooler_output, full.pooler_output)
    n = short.last_hidden_state.shape[1]
    torch.testing.assert_close(short.last_hidden_state, full.last_hidden_state[:, :n])


def test_tiny_pipeline_round_trips_through_save_and_from_pretrained(tiny_parts, tmp_path):
    pipe = g.assemble_pipeline(tiny_parts / "teacher", tiny_parts / "vae", tiny_parts / "unet")
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(tmp_path / "sd")
    loaded = StableDiffusionPipeline.from_pretrained(tmp_path / "sd")
    loaded.set_progress_bar_config(disable=True)
    kwargs = dict(num_inference_steps=3, guidance_scale=3.0, output_type="pt")
    a = pipe("a red star", generator=torch.Generator().manual_seed(5), **kwargs).images
    b = loaded("a red star", generator=torch.Generator().manual_seed(5), **kwargs).images
    assert a.shape == (1, 3, 32, 32)
    torch.testing.assert_close(a, b)
    c = loaded("a red star", generator=torch.Generator().manual_seed(6), **kwargs).images
    assert not torch.allclose(a, c)


def test_unet_training_step_lowers_the_denoising_loss(tiny_parts, tmp_path):
    from transformers import AutoTokenizer, CLIPTextModel

    from koclip_lib.train import LoopConfig, train_loop

    tok = AutoTokenizer.from_pretrained(tiny_parts / "teacher")
    text = CLIPTextModel.from_pretrained(tiny_parts / "teacher").eval()
    unet = g.build_unet(g.UNetConfig(block_out_channels=[16, 32]), 8, 32)
    sched = g.noise_scheduler()
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(8, 4, 8, 8, generator=gen), torch.randn(8, 4, 8, 8, generator=gen)
    t = torch.randint(0, 1000, (8,), generator=gen)
    with torch.no_grad():
        cond = text(**g.tokenize(tok, ["a red star"] * 8)).last_hidden_state

    def loss(batch=None):
        return torch.nn.functional.mse_loss(unet(sched.add_noise(x0, noise, t), t, encoder_hidden_states=cond).sample, noise)

    before = loss().item()
    train_loop([unet], loss, LoopConfig(steps=15, lr=3e-3, warmup_steps=0), tmp_path)
    assert loss().item() < before

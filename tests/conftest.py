import os
import sys
from pathlib import Path

import random

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def mini_params():
    from koclip_lib.common import load_params

    return load_params(REPO / "params" / "mini.yaml")


@pytest.fixture(scope="session")
def mini_root():
    """The main job's artifact cache: models trained here by one test are reused by the notebooks and vice versa."""
    return REPO / "outputs" / "mini"


@pytest.fixture(scope="session")
def tiny_parts(tmp_path_factory):
    """A tiny teacher (tokenizer + CLIP), VAE and UNet saved the way the main job saves them."""
    from koclip_lib import generator as g
    from koclip_lib import miniworld as mw

    root = tmp_path_factory.mktemp("tiny")
    world = mw.WorldConfig()
    rng = random.Random(0)
    scenes = mw.sample_scenes(300, 0, world, split="all", styles=list(mw.STYLES))
    tokenizer = g.train_english_tokenizer([mw.caption_en(s, rng, world) for s in scenes], vocab_size=300)
    teacher = g.build_teacher(g.TeacherConfig(width=32, layers=1, vision_layers=1, heads=2, projection_dim=16), tokenizer, 32)
    teacher.save_pretrained(root / "teacher")
    tokenizer.save_pretrained(root / "teacher")
    g.build_vae(g.VAEConfig(block_out_channels=[8, 16, 16]), 32).save_pretrained(root / "vae")
    g.build_unet(g.UNetConfig(block_out_channels=[16, 32]), 8, 32).save_pretrained(root / "unet")
    pipe = g.assemble_pipeline(root / "teacher", root / "vae", root / "unet")
    pipe.save_pretrained(root / "sd")
    return root



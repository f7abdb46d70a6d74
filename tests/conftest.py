import json
import os
import sys
from pathlib import Path

import random

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("MPLBACKEND", "Agg")
# one thread, as in the notebooks' kernels (koclip_lib.run): on these tiny models a second thread gains little, and
# pytest runs in two workers
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def mini_params():
    from koclip_lib.common import load_params

    return load_params(REPO / "params" / "mini.yaml")


@pytest.fixture(scope="session")
def standin_hub():
    """The stand-ins params/standin.yaml names (outputs/standin/hub), written when absent (`make test` writes them
    first). A file lock: two pytest workers write them once."""
    from filelock import FileLock

    from koclip_lib import standins

    hub = REPO / "outputs" / "standin" / "hub"
    hub.mkdir(parents=True, exist_ok=True)
    with FileLock(str(hub.parent / ".hub.lock")):
        record = hub / "standins.json"
        written = json.loads(record.read_text(encoding="utf-8")).get("standins", {}) if record.exists() else {}
        missing = [key for key in standins.STANDINS if key not in written]
        if missing:
            standins.write_standins(hub, only=missing)
    return hub


@pytest.fixture(scope="session")
def tiny_parts(tmp_path_factory):
    """A tiny teacher (tokenizer + CLIP), VAE and UNet saved the way the main job saves them."""
    from koclip_lib.miniworld import generator as g
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




@pytest.fixture(scope="session")
def tiny_student(tiny_parts):
    """An untrained Korean student for the tiny pipeline (32 wide, 77 positions), saved as `save_student` saves it."""
    from koclip_lib import distill

    folder = tiny_parts / "student"
    if not folder.exists():
        tok = distill.train_student_tokenizer(["왼쪽에 빨간 별이 있다", "오른쪽에 파란 하트", "a red star on the left"] * 20,
                                              vocab_size=200, max_length=24)  # a short window, so long prompts are cheap to test
        backbone = __import__("transformers").RobertaConfig(
            vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=26, pad_token_id=tok.pad_token_id, type_vocab_size=1)
        torch.manual_seed(0)
        student = distill.KoreanTextEncoder.from_backbone(backbone, 32, head_layers=1, head_heads=2,
                                                          teacher=str(tiny_parts / "teacher"))
        distill.save_student(student, tok, folder, {})
    return folder


@pytest.fixture(scope="module")
def tiny_pipe(tiny_parts):
    """The tiny random SD pipeline of one test module (conftest.tiny_parts), loaded as a user would."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_parts / "sd")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def serve_app():
    """`serve_app(app)` runs `app` under a real uvicorn server on a free loopback port and returns (host, port); the
    servers stop when the test ends."""
    import socket
    import threading
    import time

    import uvicorn

    running = []

    def start(app, **config):  # config: more uvicorn.Config arguments
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **config))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        running.append((server, thread))
        deadline = time.time() + 10
        while not server.started:
            assert time.time() < deadline, "the server did not start"
            time.sleep(0.02)
        return "127.0.0.1", port

    yield start
    for server, thread in running:
        server.should_exit = True
        thread.join(10)

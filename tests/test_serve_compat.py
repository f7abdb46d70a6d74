"""The APIs SD clients already speak, driven by the real clients on a real server: AUTOMATIC1111's (`webuiapi`) and
OpenAI's images API (`openai`), over the service's one queue."""
import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from koclip_lib.serve import PipelineEngine, Settings, create_app


def random_lora(unet, out_dir):
    """A LoRA file for `unet` with random (non-zero) weights, written the diffusers way."""
    import copy

    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, get_peft_model_state_dict

    unet = copy.deepcopy(unet)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_" in name:
                param.normal_(0, 0.5)
    StableDiffusionPipeline.save_lora_weights(out_dir, unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)))
    return out_dir


@pytest.fixture
def server(tiny_pipe, tmp_path, serve_app):
    """A real uvicorn server on a free loopback port; yields (host, port, app)."""
    registry = tmp_path / "loras.json"
    lora = random_lora(tiny_pipe.unet, tmp_path / "crayon")
    registry.write_text(json.dumps({"crayon": {"path": str(lora), "trigger": "크레용", "description": "test"}}))
    settings = Settings(db_path=str(tmp_path / "jobs.sqlite3"), warmup=False, default_steps=2, max_queue=8, max_batch=4,
                        initial_s_per_image_step=0.01, api_key="s3cret", max_side=256, max_steps=10, lora_registry=str(registry))
    app = create_app(PipelineEngine(tiny_pipe), settings)
    return (*serve_app(app), app)


def _pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_webuiapi_client_generates_with_a1111_fields(server):
    import webuiapi

    host, port, app = server
    api = webuiapi.WebUIApi(host=host, port=port, username="any", password="s3cret")  # A1111's --api-auth
    result = api.txt2img(prompt="빨간 별 하나", negative_prompt="흐릿한", seed=11, steps=3, cfg_scale=6.0, width=64,
                         height=64, batch_size=2, sampler_name="Euler a")
    assert len(result.images) == 2 and result.images[0].size == (64, 64)
    info = result.info
    assert info["all_seeds"] == [11, 12] and info["sampler_name"] == "Euler a" and info["cfg_scale"] == 6.0
    assert "enable_hr" in info["ignored_fields"] and "alwayson_scripts" in info["ignored_fields"]  # accepted, listed
    # the same image as the service's own API gives for the same settings: one code path
    assert "Sampler: Euler a" in result.images[0].info["parameters"]
    # <lora:NAME:weight> in the prompt: the registered LoRA, at that weight, named in the PNG's parameters
    styled = api.txt2img(prompt="빨간 별 하나 <lora:crayon:0.8>", negative_prompt="흐릿한", seed=11, steps=3, cfg_scale=6.0,
                         width=64, height=64, sampler_name="Euler a")
    assert styled.info["loras"] == {"crayon": 0.8} and styled.info["prompt"] == "빨간 별 하나"
    assert "<lora:crayon:0.8>" in styled.images[0].info["parameters"]
    assert np.abs(_pixels(styled.images[0]) - _pixels(result.images[0])).mean() > 1
    random_seed = api.txt2img(prompt="한국 수묵화 풍경 <lora:crayon:0.8>", seed=-1, cfg_scale=5.5, width=64, height=64, steps=2)
    assert len(random_seed.images) == 1 and 0 <= random_seed.info["seed"] < 2**32 and random_seed.info["cfg_scale"] == 5.5
    assert f"Seed: {random_seed.info['seed']}," in random_seed.images[0].info["parameters"]
    import httpx

    with httpx.Client(base_url=f"http://{host}:{port}", headers={"Authorization": "Bearer s3cret"}, trust_env=False,
                      timeout=30) as client:
        png = client.post("/v1/images:sync", json={"prompt": "빨간 별 하나", "negative_prompt": "흐릿한", "seed": 12,
                                                   "steps": 3, "guidance": 6.0, "width": 64, "height": 64,
                                                   "sampler": "Euler a"}).content
        assert np.abs(_pixels(Image.open(io.BytesIO(png))) - _pixels(result.images[1])).max() <= 1
        # seed -1 is random, stored and reported
        r = client.post("/sdapi/v1/txt2img", json={"prompt": "a star", "seed": -1, "width": 64, "height": 64, "steps": 2})
        assert r.status_code == 200 and json.loads(r.json()["info"])["seed"] >= 0
        # a sampler it does not have: 422 listing the ones it has, under A1111's field name
        r = client.post("/sdapi/v1/txt2img", json={"prompt": "a", "sampler_name": "DPM adaptive", "width": 64, "height": 64})
        assert r.status_code == 422 and "sampler_name" in r.json()["detail"] and "Euler a" in r.json()["detail"]
        r = client.post("/sdapi/v1/txt2img", json={"prompt": "a <lora:nope:1>", "width": 64, "height": 64})
        assert r.status_code == 422 and "unknown LoRA 'nope'" in r.json()["detail"]
        assert client.post("/sdapi/v1/txt2img", json={"prompt": "a", "cfg_scale": 99}).status_code == 422
        assert client.post("/sdapi/v1/txt2img", json={"prompt": "a"}, headers={"Authorization": "Bearer no"}).status_code == 401
    assert [s["name"] for s in api.get_samplers()][:2] == ["DPM++ 2M", "DPM++ 2M Karras"]
    assert api.get_loras() == [{"name": "crayon", "alias": "crayon", "path": "crayon",
                                "metadata": {"trigger": "크레용", "description": "test"}}]
    assert api.get_sd_models()[0]["model_name"] == "sd"
    progress = api.get_progress()
    assert progress["progress"] == 0.0 and progress["state"]["job_count"] == 0
    assert app.state.service.queue == []


def test_openai_sdk_generates_b64_and_url_images(server):
    import openai

    host, port, app = server
    client = openai.OpenAI(base_url=f"http://{host}:{port}/v1", api_key="s3cret", max_retries=0)
    out = client.images.generate(model="koclip", prompt="파란 하트", n=2, size="64x64", response_format="b64_json")
    images = [Image.open(io.BytesIO(base64.b64decode(d.b64_json))) for d in out.data]
    assert len(images) == 2 and images[0].size == (64, 64) and "파란 하트" in images[0].info["parameters"]
    assert np.abs(_pixels(images[0]) - _pixels(images[1])).mean() > 1  # two seeds, two images
    url = client.images.generate(prompt="파란 하트", size="64x64", response_format="url").data[0].url
    assert url.startswith(f"http://{host}:{port}/v1/jobs/") and url.endswith("/image")
    import httpx

    png = httpx.get(url, headers={"Authorization": "Bearer s3cret"}, trust_env=False)
    assert png.status_code == 200 and Image.open(io.BytesIO(png.content)).size == (64, 64)
    with pytest.raises(openai.BadRequestError) as err:
        client.images.generate(prompt="파란 하트", size="sixty-four")
    assert err.value.body["param"] == "size" and "WIDTHxHEIGHT" in err.value.body["message"]
    with pytest.raises(openai.BadRequestError) as err:
        client.images.generate(prompt="   ")
    assert err.value.body["param"] == "prompt"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"http://{host}:{port}/v1", api_key="wrong", max_retries=0).images.generate(prompt="a")

"""The explorer of notebook 06 (`koclip_lib.explore`), driven as a user drives it: widget values set from Python, the
"generate" button clicked, the images and the grid read back. On the stand-in profile (params/standin.yaml), whose
models `make test` builds first (cached in outputs/standin)."""
import json

import numpy as np
import pytest

from koclip_lib import explore
from koclip_lib.adapters import LoraRegistry, loaded_adapters
from koclip_lib.common import load_params

from conftest import REPO

STEPS = 2


@pytest.fixture(scope="module")
def params(standin_hub):
    return load_params(REPO / "params" / "standin.yaml")


@pytest.fixture(scope="module")
def registry(params, tmp_path_factory):
    """The profile's LoRAs, and `ink-loud`: the stand-in `ink` (4 training steps: its effect is a pixel level or
    so) with its up-projections × 1000, so that a LoRA's effect on the image is far from rounding."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    profile = explore.load_registry(params)
    registry = LoraRegistry(profile.entries)
    source = profile.get("ink")["path"]
    with safe_open(source, framework="pt") as f:
        state, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    loud = tmp_path_factory.mktemp("lora") / "pytorch_lora_weights.safetensors"
    save_file({k: v * 1000 if ".lora.up." in k else v for k, v in state.items()}, str(loud), metadata=metadata)
    registry.add("ink-loud", loud, trigger=profile.get("ink")["trigger"])
    return registry


@pytest.fixture(scope="module")
def routes(params):
    return explore.load_routes(params)


@pytest.fixture
def explorer(routes, registry, params):
    """A fresh explorer on the module's routes (loaded once); steps set low."""
    made = explore.Explorer(routes, registry, **explore.defaults(params))
    made.steps.value = STEPS
    made.lora.value = explore.NO_LORA
    return made


def drawn(explorer) -> dict[str, np.ndarray]:
    """Click "generate" and return each route's image as an array."""
    explorer.button.click()
    assert "error" not in explorer.status.value, explorer.status.value
    return {label: np.asarray(im).astype(int) for label, im in explorer.images.items()}


def test_the_profile_gives_three_routes_sharing_one_unet_and_its_defaults(params, routes):
    assert list(routes) == ["teacher · Korean prompt (raw)", "translator + teacher", "student · unet"]
    assert routes["translator + teacher"].translator is not None and routes["student · unet"].translator is None
    assert len({id(r.pipe.unet) for r in routes.values()}) == 1  # a LoRA acts on every route
    # and one safety checker (SD 1.5 ships one; the stand-in's flags nothing), kept on every route
    assert len({id(r.pipe.safety_checker) for r in routes.values()}) == 1
    assert routes["translator + teacher"].pipe.safety_checker is not None
    assert type(routes["student · unet"].pipe).__name__ == "KoreanStableDiffusionPipeline"
    assert explore.defaults(params) == {"prompt": "의자에 앉은 한 마리의 핑크 고양이", "seed": 1147446245, "steps": 2,
                                        "guidance_scale": 7.5}


def test_other_routes_by_their_sweep_names(params):
    """`encoders` as in `sweep.encoders`: two students side by side share the first one's UNet; the English
    reference needs an English prompt, which the explorer does not take."""
    routes = explore.load_routes(params, ["sequence", "unet"])
    assert list(routes) == ["student · sequence", "student · unet"]
    assert routes["student · sequence"].pipe.unet is routes["student · unet"].pipe.unet
    assert routes["student · sequence"].pipe.text_encoder is not routes["student · unet"].pipe.text_encoder
    with pytest.raises(ValueError, match="English prompt"):
        explore.load_routes(params, ["teacher", "unet"])


def test_generate_draws_one_image_per_route_into_the_grid(explorer, routes):
    assert explorer.seed.value == 1147446245 and explorer.prompt.value == "의자에 앉은 한 마리의 핑크 고양이"
    assert explorer.lora.options == (explore.NO_LORA, "ink", "ink-loud")
    assert bytes(explorer.grid.value) == b""  # the Image widget holds a memoryview
    explorer.prompt.value = "빨간 별 하나"
    explorer.negative_prompt.value = "흐릿한"
    images = drawn(explorer)
    assert list(images) == list(routes)
    assert all(im.ndim == 3 and im.std() > 0 for im in images.values())
    first = bytes(explorer.grid.value)
    assert first.startswith(b"\x89PNG")
    grid = explorer.figure()
    assert grid.size == (3 * explorer.cell, explorer.cell + 28)  # a column per route, labels under them
    # each route read the prompt its own way: the Korean as is, or the translator's English
    assert explorer.prompts["teacher · Korean prompt (raw)"] == explorer.prompts["student · unet"] == "빨간 별 하나"
    assert explorer.prompts["translator + teacher"] == routes["translator + teacher"].translator.translate(["빨간 별 하나"])[0]
    assert "student · unet" in explorer.status.value and "seed 1147446245" in explorer.status.value

    explorer.seed.value = 7
    drawn(explorer)
    assert bytes(explorer.grid.value) != first


def test_the_same_seed_draws_the_same_images_and_another_seed_others(explorer):
    explorer.seed.value = 1147446245
    a = drawn(explorer)
    b = drawn(explorer)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    explorer.seed.value = 1147446246
    c = drawn(explorer)
    assert all(not np.array_equal(a[k], c[k]) for k in a)


def test_the_lora_weight_changes_every_route_and_weight_zero_is_no_lora(explorer, routes):
    none = drawn(explorer)
    explorer.lora.value = "ink-loud"
    explorer.lora_weight.value = 1.0
    full = drawn(explorer)
    assert "LoRA ink-loud at 1" in explorer.status.value
    assert "ink-loud" in loaded_adapters(routes["student · unet"].pipe)
    # the routes share the UNet: the style LoRA acts behind the student and behind the English pipeline alike
    assert all(np.abs(full[k] - none[k]).mean() > 1 for k in none)
    explorer.lora_weight.value = 0.0
    zero = drawn(explorer)
    assert all(np.array_equal(zero[k], none[k]) for k in none)
    explorer.lora.value = "ink"  # the profile's own LoRA, trained a few steps: at weight 0 it is off too
    assert all(np.array_equal(v, none[k]) for k, v in drawn(explorer).items())
    explorer.lora.value = explore.NO_LORA  # "(none)" switches it off again
    assert all(np.array_equal(v, none[k]) for k, v in drawn(explorer).items())


def test_the_trigger_checkbox_adds_the_loras_trigger_to_the_prompt(explorer):
    explorer.lora.value = "ink"
    assert "백묘법" in explorer.add_trigger.description and not explorer.add_trigger.disabled
    explorer.lora_weight.value = 1.0
    explorer.add_trigger.value = True
    drawn(explorer)
    assert explorer.prompts["student · unet"] == "의자에 앉은 한 마리의 핑크 고양이, 백묘법"
    assert explorer.prompt.value == "의자에 앉은 한 마리의 핑크 고양이"  # the box keeps what the user typed
    explorer.prompt.value = ""  # the trigger alone is not a prompt
    explorer.button.click()
    assert "empty prompt" in explorer.status.value
    explorer.prompt.value = "의자에 앉은 한 마리의 핑크 고양이"
    explorer.lora.value = explore.NO_LORA
    assert explorer.add_trigger.disabled
    drawn(explorer)
    assert explorer.prompts["student · unet"] == "의자에 앉은 한 마리의 핑크 고양이"


def test_an_empty_prompt_shows_the_pipelines_message_and_keeps_the_images(explorer):
    before = drawn(explorer)
    grid, images = bytes(explorer.grid.value), dict(explorer.images)
    explorer.prompt.value = "   "
    explorer.button.click()  # no exception reaches the caller
    assert "error" in explorer.status.value and "empty prompt" in explorer.status.value
    assert explorer.images == images and bytes(explorer.grid.value) == grid
    assert not explorer.button.disabled
    explorer.prompt.value = "빨간 별 하나"
    assert set(drawn(explorer)) == set(before)
    assert "error" not in explorer.status.value


def test_an_unexpected_error_in_the_callback_is_shown_not_raised(explorer, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(explorer.routes["translator + teacher"].translator, "translate", broken)
    explorer.button.click()
    assert "RuntimeError: out of memory" in explorer.status.value
    assert explorer.images == {} and not explorer.button.disabled


def test_settings_record_the_widgets(explorer):
    explorer.lora.value = "ink"
    explorer.lora_weight.value = 0.5
    settings = explorer.settings()
    assert settings["lora"] == "ink" and settings["lora_weight"] == 0.5 and settings["steps"] == STEPS
    json.dumps(settings, ensure_ascii=False)

"""An explorer for Jupyter: one Korean prompt drawn through each way of reading it, side by side, at one seed.

    from koclip_lib import explore
    explorer = explore.build_explorer(load_params("params/mini.yaml"))
    explorer            # the widgets: prompt, negative prompt, seed, steps, LoRA + weight, "generate", the grid

The routes are those of notebooks 00 and 03, on the profile's SD 1.x checkpoint:
  - `teacher · Korean prompt (raw)`: the English pipeline reading the Korean as it is (the problem);
  - `translator + teacher`: the profile's Korean→English translator, then the English pipeline (the seed's option ③);
  - `student · OBJECTIVE`: the Korean pipeline, the distilled student in place of CLIP (the project's answer).
The English and the Korean pipelines share one UNet, VAE and safety checker (only the text side differs), so a
style LoRA chosen in the explorer acts on every route, and the checkpoint is in memory once.

`Explorer.generate()` is the button's callback: it reads the widgets, draws every route with
`torch.Generator().manual_seed(seed)`, keeps the images in `explorer.images` ({route label: PIL image}) and puts the
labelled grid (`evaluate.image_grid`) in `explorer.grid` as PNG bytes. A prompt the pipeline refuses (empty, too long)
or a LoRA that does not load shows its message in `explorer.status` and leaves the previous images in place.
"""

from __future__ import annotations

import html
import io
import time
from dataclasses import dataclass
from typing import Sequence

import ipywidgets as widgets
import torch
from PIL import Image

from .adapters import LoraError, LoraRegistry, add_trigger, apply_loras
from .pipeline import PromptError

NO_LORA = "(none)"  # the LoRA dropdown's first entry: every LoRA off


# ---------------------------------------------------------------------------------------------------------------
# The routes: loaded once from a profile
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Route:
    """One way of drawing a Korean prompt: a pipeline, and the translator that reads the prompt first (or None)."""
    label: str
    pipe: object
    translator: object = None

    def read(self, text: str) -> str:
        """The prompt this route's pipeline gets for the user's Korean `text` (the translator's English, or `text`)."""
        return self.translator.translate([text])[0] if self.translator is not None and text.strip() else text


def english_pipeline(sd, korean=None, device: str | None = None):
    """The checkpoint's English pipeline: its own text encoder, tokenizer and scheduler; with a Korean pipeline
    `korean` of the same checkpoint, on that pipeline's UNet, VAE and safety checker (loaded once, shared)."""
    from diffusers import StableDiffusionPipeline

    from . import evaluate, plan
    from .common import pick_device

    if korean is None:
        return evaluate.load_pipeline(sd, device=device)
    path, kwargs = plan.checkpoint(sd)
    english = StableDiffusionPipeline.from_pretrained(path, **kwargs, unet=korean.unet, vae=korean.vae, safety_checker=None,
                                                      feature_extractor=None, requires_safety_checker=False)
    english.register_modules(safety_checker=korean.safety_checker, feature_extractor=korean.feature_extractor)
    english.register_to_config(requires_safety_checker=korean.safety_checker is not None)
    english.set_progress_bar_config(disable=True)
    return english.to(pick_device(device))


def load_routes(params: dict, encoders: Sequence[str] | None = None, device: str | None = None) -> dict[str, Route]:
    """{label: Route} for the profile's SD checkpoint. `encoders`: names as in `sweep.encoders` — "raw",
    "translator", or a student objective — by default raw, translator and the `lora.student` objective (the student
    the profile's LoRAs were trained behind). The Korean pipeline is loaded by `load_korean_pipeline` (with its
    compatibility check); the English pipeline takes its text encoder and tokenizer from the checkpoint and shares
    the Korean pipeline's UNet, VAE and safety checker."""
    from . import evaluate, plan
    from .pipeline import load_korean_pipeline
    from .translate import Translator

    student_name = params.get("lora", {}).get("student", "unet")
    names = list(encoders or ("raw", "translator", student_name))
    if "teacher" in names:
        raise ValueError("the explorer draws Korean prompts: 'teacher' (the English prompt) is notebook 03's reference")
    objectives = [n for n in names if n not in ("raw", "translator")]
    students = plan.students(params) if objectives else {}  # the profile's objectives build in order (cached)
    translator_dir = plan.translator(params) if "translator" in names else None
    specs = evaluate.sweep_encoders(names, students, translator_dir)  # {label: (kind, folder)}, notebook 03's labels

    sd = plan.profile_inputs(params).sd()
    first = next((folder for kind, folder in specs.values() if kind == "student"), None)
    korean = load_korean_pipeline(sd=sd, text_encoder=first, device=device) if first else None
    english = None
    routes = {}
    for label, (kind, folder) in specs.items():
        if kind == "student":  # another student: its own text side on the same UNet and VAE
            pipe = korean if folder == first else load_korean_pipeline(sd=sd, text_encoder=folder, device=device,
                                                                       unet=korean.unet, vae=korean.vae)
            routes[label] = Route(label, pipe)
            continue
        english = english or english_pipeline(sd, korean, device)
        translator = Translator.from_pretrained(folder, device=device) if kind == "translator" else None
        routes[label] = Route(label, english, translator)
    return routes


def load_registry(params: dict) -> LoraRegistry:
    """The profile's LoRA registry (`plan.loras`, built or found cached); an empty one when the profile has none."""
    from . import plan

    if not params.get("lora", {}).get("adapters"):
        return LoraRegistry()
    return LoraRegistry.from_file(plan.loras(params))


def defaults(params: dict) -> dict:
    """The explorer's starting values from the profile: its fixed prompt (`evaluate.prompt`, else the sweep's first
    Korean prompt), the sweep's seed, and the steps and guidance scale every notebook draws with (`evaluate`)."""
    section, sweep = params.get("evaluate", {}), params.get("sweep", {})
    prompts = sweep.get("prompts") or [[""]]
    return {"prompt": section.get("prompt") or prompts[0][0], "seed": sweep.get("seed", params.get("seed", 0)),
            "steps": section.get("steps", 20), "guidance_scale": section.get("guidance_scale", 7.5)}


def build_explorer(params: dict, encoders: Sequence[str] | None = None, device: str | None = None, **kwargs) -> "Explorer":
    """The explorer for a profile (`common.load_params`): its routes, its LoRAs and its defaults, loaded once."""
    return Explorer(load_routes(params, encoders, device), load_registry(params), **{**defaults(params), **kwargs})


# ---------------------------------------------------------------------------------------------------------------
# The widgets and the "generate" callback
# ---------------------------------------------------------------------------------------------------------------
def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class Explorer:
    """ipywidgets around `routes` ({label: Route}). Set the widgets (from the page or from Python) and click
    `button` (or call `generate()`); `images`, `grid` and `status` show the result."""

    def __init__(self, routes: dict[str, Route], registry: LoraRegistry | None = None, prompt: str = "",
                 negative_prompt: str = "", seed: int = 1147446245, steps: int = 20, guidance_scale: float = 7.5,
                 cell: int = 192):
        self.routes, self.registry = routes, registry or LoraRegistry()
        self.guidance_scale, self.cell = guidance_scale, cell
        self.images: dict[str, Image.Image] = {}
        self.prompts: dict[str, str] = {}  # what each route's pipeline read on the last draw (the translator's English)
        self.seconds: dict[str, float] = {}

        wide = widgets.Layout(width="95%")
        self.prompt = widgets.Textarea(value=prompt, description="prompt", placeholder="그리고 싶은 장면을 한국어로",
                                       layout=wide, rows=2)
        self.negative_prompt = widgets.Text(value=negative_prompt, description="negative", layout=wide,
                                            placeholder="what not to draw (each route reads it as it reads the prompt)")
        self.seed = widgets.IntText(value=seed, description="seed")
        self.steps = widgets.IntSlider(value=steps, min=1, max=max(50, steps), description="steps")
        self.lora = widgets.Dropdown(options=[NO_LORA, *sorted(self.registry.entries)], value=NO_LORA, description="LoRA")
        self.lora_weight = widgets.FloatSlider(value=1.0, min=0.0, max=1.5, step=0.05, description="weight")
        self.add_trigger = widgets.Checkbox(value=False, description="add its trigger word")
        self.button = widgets.Button(description="generate", button_style="primary", icon="paint-brush")
        self.status = widgets.HTML()
        self.grid = widgets.Image(format="png")
        self.button.on_click(self._on_click)
        self.lora.observe(self._show_trigger, names="value")
        self._show_trigger()
        self.widget = widgets.VBox([
            self.prompt, self.negative_prompt, widgets.HBox([self.seed, self.steps]),
            widgets.HBox([self.lora, self.lora_weight, self.add_trigger]), self.button, self.status, self.grid])

    def _repr_mimebundle_(self, **kwargs):  # `explorer` as a cell's last line shows the widgets
        return self.widget._repr_mimebundle_(**kwargs)

    def _show_trigger(self, change=None) -> None:
        trigger = self.registry.get(self.lora.value).get("trigger", "") if self.lora.value != NO_LORA else ""
        self.add_trigger.description = f"add its trigger '{trigger}'" if trigger else "add its trigger word"
        self.add_trigger.disabled = not trigger

    def _on_click(self, _button) -> None:
        """The button's callback: `generate`, with any unexpected error shown too (a widget callback's exception
        would otherwise go to the kernel's log, not to the page)."""
        try:
            self.generate()
        except Exception as err:  # noqa: BLE001  (shown to the user; the previous images stay)
            self._error(f"{type(err).__name__}: {err}")

    def _error(self, message: str) -> None:
        self.status.value = f"<span style='color:#b00020'><b>error</b>: {html.escape(message)}</span>"

    def _check_prompt(self, prompt: str, negative: str) -> None:
        """Refuse a prompt (or negative prompt) before drawing anything, with the Korean pipeline's own message (its
        prompt policy: empty, or longer than it reads)."""
        for route in self.routes.values():
            if hasattr(route.pipe, "prompt_windows"):
                route.pipe.prompt_windows(prompt)
                route.pipe.prompt_windows(negative, allow_empty=True)
                return
        if not prompt.strip():
            raise PromptError("empty prompt: describe the image to draw")

    def _set_lora(self, name: str, weight: float) -> None:
        weights = {} if name == NO_LORA else {name: float(weight)}
        for pipe in {id(r.pipe): r.pipe for r in self.routes.values()}.values():  # each pipeline once (shared UNet)
            apply_loras(pipe, weights, self.registry)

    def generate(self) -> dict[str, Image.Image] | None:
        """Draw the widgets' prompt through every route at the widgets' seed; returns `images` (None on a refused
        prompt or LoRA, whose message is then in `status`)."""
        prompt, negative = self.prompt.value, self.negative_prompt.value
        try:
            self._check_prompt(prompt, negative)  # what the user typed: an empty box is refused, trigger or not
            if self.lora.value != NO_LORA and self.add_trigger.value:
                entry = self.registry.get(self.lora.value)
                prompt = add_trigger(prompt.strip(), entry.get("trigger", ""), entry.get("trigger_position", "end"))
                self._check_prompt(prompt, negative)  # the trigger may take it past the longest prompt read
            self._set_lora(self.lora.value, self.lora_weight.value)
        except (PromptError, LoraError) as err:
            self._error(str(err))
            return None
        self.button.disabled, self.status.value = True, "drawing…"
        try:
            images, prompts, seconds, flagged = {}, {}, {}, []
            for label, route in self.routes.items():
                started = time.perf_counter()
                prompts[label] = route.read(prompt)
                out = route.pipe(prompts[label], negative_prompt=route.read(negative) if negative.strip() else None,
                                 num_inference_steps=self.steps.value, guidance_scale=self.guidance_scale,
                                 generator=torch.Generator().manual_seed(int(self.seed.value)))
                images[label], seconds[label] = out.images[0], time.perf_counter() - started
                if out.nsfw_content_detected and out.nsfw_content_detected[0]:
                    flagged.append(label)
        finally:
            self.button.disabled = False
        self.images, self.prompts, self.seconds = images, prompts, seconds
        self.grid.value = png_bytes(self.figure())
        self.status.value = self._summary(flagged)
        return images

    def figure(self) -> Image.Image:
        """The last draw as one labelled grid, a column per route."""
        from .evaluate import image_grid

        return image_grid(list(self.images.values()), list(self.images), cols=max(len(self.images), 1), cell=self.cell)

    def _summary(self, flagged: Sequence[str]) -> str:
        lora = "no LoRA" if self.lora.value == NO_LORA else f"LoRA {self.lora.value} at {self.lora_weight.value:g}"
        lines = [f"seed {self.seed.value}, {self.steps.value} steps, guidance {self.guidance_scale:g}, {lora}"]
        for label, text in self.prompts.items():
            flag = " — blacked out by the safety checker" if label in flagged else ""
            lines.append(f"{html.escape(label)}: {self.seconds[label]:.1f} s, read «{html.escape(text)}»{flag}")
        return "<br>".join(lines)

    def settings(self) -> dict:
        """The widgets' values now (the notebook records them right after a draw, in its metrics)."""
        return {"prompt": self.prompt.value, "negative_prompt": self.negative_prompt.value, "seed": self.seed.value,
                "steps": self.steps.value, "guidance_scale": self.guidance_scale, "lora": self.lora.value,
                "lora_weight": self.lora_weight.value, "add_trigger": self.add_trigger.value}

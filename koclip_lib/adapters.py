"""LoRA adapters on a live pipeline: what a running service needs, and nothing that trains.

    registry = LoraRegistry.from_file("outputs/mini/loras/registry.json")
    apply_loras(pipe, {"ink": 1.0}, registry)          # load (once) and weight; several at once mix
    pipe(add_trigger("왼쪽에 빨간 별이 있다", "백묘법"))
    apply_loras(pipe, {}, registry)                    # off again, without reloading the pipeline

Files: `pytorch_lora_weights.safetensors` is diffusers' layout (`pipe.load_lora_weights(folder)` reads it) with the
LoRA's rank and alpha in its metadata; `<name>.kohya.safetensors` is the kohya-ss / A1111 layout (`lora_unet_...`
keys, `.alpha` tensors, `ss_*` and kohya's `modelspec.*` metadata), written with diffusers' own
`convert_state_dict_to_kohya`, which diffusers converts back when it loads one; `<name>.kohya.json` beside it is what
A1111 shows as the LoRA's activation text; `README.md` is the folder's 🤗 model card. `koclip_lib.lora` trains them.
"""

from __future__ import annotations

import datetime
import json
import re
from pathlib import Path
from typing import Sequence

import torch

from .common import write_json

WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # diffusers' default name: load_lora_weights(folder) finds it
# a LoRA trained with its trigger as a token of its own: the token's embedding, in diffusers' textual-inversion layout
# ({trigger: vector}, what `pipe.load_textual_inversion(folder, weight_name=...)` reads), beside the weights
TRIGGER_EMBEDDING_NAME = "learned_embeds.safetensors"
# a LoRA whose trigger was taught to the text encoder (`LoraTrainConfig.text_encoder_target_modules`): that encoder's
# LoRA in peft's keys, the encoder's class, rank, alpha and target modules in the metadata, beside the UNet's weights
# and the trigger's row
TEXT_ENCODER_LORA_NAME = "text_encoder_lora.safetensors"
TRIGGER_POSITIONS = ("start", "end")
LORA_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # names are keys a client may send, never paths
SD15_LICENSE = "creativeml-openrail-m"  # SD 1.5's; a LoRA for a base derived from it is used under it
MODELSPEC_VERSION = "1.0.1"  # what sd-scripts' library/sai_model_spec.py writes (its field list has trigger_phrase)
HANGUL = re.compile(r"[\u1100-\u11ff\u3130-\u318f\uac00-\ud7a3]")


class LoraError(ValueError):
    """A LoRA that cannot be used; the message says which and why."""


class UnknownLoraError(LoraError, KeyError):
    """A LoRA name the registry does not have; the message lists the ones it has."""

    def __str__(self):  # KeyError would print the message in quotes
        return self.args[0]


class LoraFileError(LoraError):
    """A LoRA file that is unreadable or does not fit the pipeline's UNet; the pipeline is left as it was."""


def add_trigger(caption: str, trigger: str, position: str = "end", separator: str = ", ") -> str:
    """The caption with its trigger word at the start or the end ("..., 백묘법", as the seed wrote its prompts)."""
    if position not in TRIGGER_POSITIONS:
        raise ValueError(f"trigger position must be one of {TRIGGER_POSITIONS}, not {position!r}")
    if not trigger:
        return caption
    return f"{trigger}{separator}{caption}" if position == "start" else f"{caption}{separator}{trigger}"


# ---------------------------------------------------------------------------------------------------------------
# Files: diffusers' layout and kohya-ss / A1111's
# ---------------------------------------------------------------------------------------------------------------
def korean_trigger_note(trigger: str) -> str:
    """What every file carrying a Korean trigger says about it (empty for a trigger in another script)."""
    if not HANGUL.search(trigger or ""):
        return ""
    return (f"The trigger '{trigger}' is Korean: it works only behind koclip's Korean text encoder (the student); SD's own "
            "CLIP text encoder does not know it (its tokenizer splits Hangul into byte pieces it barely saw in training).")


def a1111_sidecar(kohya_file: str | Path) -> Path:
    """Where A1111's Lora extension reads a LoRA file's user metadata (activation text, ...): beside it, `.json`."""
    return Path(kohya_file).with_suffix(".json")


def export_kohya(diffusers_file: str | Path, out_file: str | Path, rank: int, alpha: float, trigger: str = "",
                 name: str = "lora", *, resolution: int = 512, description: str = "", license: str | None = None,
                 prediction_type: str = "epsilon") -> Path:
    """The kohya-ss / A1111 file of a diffusers LoRA, converted as diffusers' own training scripts do
    (`--output_kohya_format`): diffusers -> peft -> kohya keys; `.alpha` set to the trained alpha (the converter
    writes the rank, which is right only when alpha == rank). Its metadata: kohya's `ss_*` and the SAI model spec
    (`modelspec.*`) as sd-scripts writes them for an SD 1.x LoRA, `modelspec.trigger_phrase` the trigger. Also writes
    the A1111 sidecar (`a1111_sidecar`) with the trigger as activation text."""
    from diffusers.utils import convert_all_state_dict_to_peft, convert_state_dict_to_kohya
    from safetensors.torch import load_file, save_file

    kohya = convert_state_dict_to_kohya(convert_all_state_dict_to_peft(load_file(str(diffusers_file))))
    kohya = {k: (torch.tensor(float(alpha)) if k.endswith(".alpha") else v.contiguous()) for k, v in kohya.items()}
    note = korean_trigger_note(trigger)
    hint = " ".join(filter(None, [f"Add '{trigger}' to the prompt." if trigger else "", note]))
    metadata = {"ss_network_module": "networks.lora", "ss_network_dim": str(rank), "ss_network_alpha": str(alpha),
                "ss_base_model_version": "sd_v1", "ss_output_name": name, "ss_trigger_word": trigger}
    modelspec = {"sai_model_spec": MODELSPEC_VERSION, "architecture": "stable-diffusion-v1/lora",
                 "implementation": "diffusers", "title": name, "resolution": f"{resolution}x{resolution}",
                 "date": datetime.date.today().isoformat(), "trigger_phrase": trigger, "description": description,
                 "license": license, "usage_hint": hint,
                 "prediction_type": {"v_prediction": "v"}.get(prediction_type, prediction_type)}  # sd-scripts' names
    metadata.update({f"modelspec.{k}": v for k, v in modelspec.items() if v})  # as sd-scripts: unset fields left out
    save_file(kohya, str(out_file), metadata=metadata)
    write_json(a1111_sidecar(out_file), {"description": description, "sd version": "SD1", "activation text": trigger,
                                         "preferred weight": 1.0, "negative text": "", "notes": note})
    return Path(out_file)


def _module_name(key: str) -> str | None:
    """'unet.down_blocks.0...attn1.to_q.lora_A.weight' (or '.lora.down.weight') -> the UNet module it adapts."""
    for marker in (".lora_A.", ".lora_B.", ".lora.down.", ".lora.up.", ".lora_linear_layer."):
        if marker in key:
            return key.split(marker)[0]
    return None


def read_lora_file(path: str | Path, unet) -> dict:
    """Check a LoRA file against `unet` without touching any pipeline: readable safetensors, UNet keys only, every
    target module present with matching shapes. Returns {"modules": n, "rank": r}; raises LoraFileError."""
    from diffusers import StableDiffusionPipeline
    from safetensors import safe_open

    path = Path(path)
    if path.is_dir():
        path = path / WEIGHT_NAME
    if not path.is_file():
        raise LoraFileError(f"{path}: no such LoRA file")
    try:
        with safe_open(str(path), framework="pt") as f:
            list(f.keys())
        state, _ = StableDiffusionPipeline.lora_state_dict(str(path))
    except Exception as err:  # safetensors raises its own error types for a truncated or garbled header
        raise LoraFileError(f"{path}: not a readable safetensors LoRA file ({type(err).__name__}: {err})") from None
    if not state:
        raise LoraFileError(f"{path}: holds no LoRA weights")
    other = sorted({k.split(".")[0] for k in state if not k.startswith("unet.")})
    if other:
        raise LoraFileError(f"{path}: has weights for {', '.join(other)}; koclip LoRAs adapt the UNet only (the text "
                            "encoder is the part that is swapped for the Korean student)")
    modules = dict(unet.named_modules())
    missing, mismatched, ranks = [], [], set()
    for key, weight in state.items():
        module_name = _module_name(key[len("unet."):])
        if module_name is None:
            continue
        module = modules.get(module_name)
        if module is None or not hasattr(module, "in_features"):
            missing.append(module_name)
            continue
        down = ".lora_A." in key or ".lora.down." in key or "down" in key.rsplit(".", 2)[-2]
        expected = module.in_features if down else module.out_features
        got = weight.shape[1] if down else weight.shape[0]
        if got != expected:
            mismatched.append(f"{module_name} ({got} vs {expected})")
        ranks.add(weight.shape[0] if down else weight.shape[1])
    if missing:
        names = sorted(set(missing))
        raise LoraFileError(f"{path}: {len(names)} target modules are not in this UNet (e.g. {', '.join(names[:3])}): "
                            "the LoRA was trained for another architecture")
    if mismatched:
        raise LoraFileError(f"{path}: {len(mismatched)} target modules have other widths than this UNet's "
                            f"(e.g. {', '.join(mismatched[:3])}): the LoRA was trained for another model")
    return {"modules": len({_module_name(k[len('unet.'):]) for k in state}), "rank": max(ranks) if ranks else 0}


# ---------------------------------------------------------------------------------------------------------------
# Use: a registry by name; load, mix and unload on a live pipeline
# ---------------------------------------------------------------------------------------------------------------
class LoraRegistry:
    """name -> {"path", "trigger", "description", ...}. Names are keys a client may send; paths never are."""

    def __init__(self, entries: dict[str, dict] | None = None):
        self.entries: dict[str, dict] = {}
        for name, entry in (entries or {}).items():
            self.add(name, **entry)

    def add(self, name: str, path: str | Path, **info) -> None:
        if not LORA_NAME.match(name) or ".." in name:
            raise LoraError(f"LoRA name {name!r} must match {LORA_NAME.pattern} and contain no '..'")
        self.entries[name] = {"path": str(path), "trigger": info.pop("trigger", ""), "description": info.pop("description", ""), **info}

    @classmethod
    def from_file(cls, path: str | Path | None) -> "LoraRegistry":
        """A JSON file {name: {path, trigger, description}}; relative paths are relative to the file."""
        if not path:
            return cls()
        path = Path(path)
        if not path.is_file():
            raise LoraError(f"{path}: no such LoRA registry")
        data = json.loads(path.read_text(encoding="utf-8"))
        for name, entry in data.items():
            if "path" not in entry:
                raise LoraError(f"{path}: LoRA {name!r} has no 'path'")
        return cls({name: {**e, "path": str((path.parent / e["path"]).resolve())} for name, e in data.items()})

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        here = path.parent.resolve()
        rel = {}
        for name, e in self.entries.items():
            p = Path(e["path"]).resolve()  # the file holds paths relative to itself when they are below it
            rel[name] = {**e, "path": str(p.relative_to(here)) if p.is_relative_to(here) else str(p)}
        return write_json(path, rel)

    def get(self, name: str) -> dict:
        if name not in self.entries:
            known = ", ".join(sorted(self.entries)) or "none registered"
            raise UnknownLoraError(f"unknown LoRA {name!r}; known: {known}")
        return self.entries[name]

    def public(self) -> dict[str, dict]:
        """What a client may see: names, triggers, descriptions; no paths."""
        return {n: {k: v for k, v in e.items() if k != "path"} for n, e in sorted(self.entries.items())}


def parse_lora_spec(specs: Sequence[str] | str | None) -> dict[str, float]:
    """["ink:1.0", "ink-en:0.5"] or "ink:1.0,ink-en" -> {"ink": 1.0, "ink-en": 0.5 / 1.0}."""
    if not specs:
        return {}
    items = [s for spec in ([specs] if isinstance(specs, str) else specs) for s in spec.split(",") if s.strip()]
    out = {}
    for item in items:
        name, _, weight = item.strip().partition(":")
        try:
            out[name] = float(weight) if weight else 1.0
        except ValueError:
            raise LoraError(f"LoRA {item!r}: the weight after ':' must be a number") from None
    return out


def read_text_encoder_lora(path: str | Path, encoder) -> tuple[dict, object] | None:
    """Check a text-encoder LoRA file (`TEXT_ENCODER_LORA_NAME`) against `encoder` without touching it: readable, its
    encoder's class, rank, alpha and target modules in its metadata, every weight's module a linear layer of the
    encoder with the shape it needs. Returns (weights, peft LoraConfig), or None when the file is for another class
    of text encoder (a pipeline sharing the UNet behind another encoder takes the UNet's part only); raises
    LoraFileError."""
    from peft import LoraConfig
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
        config = LoraConfig(r=int(meta["r"]), lora_alpha=float(meta["lora_alpha"]),
                            target_modules=json.loads(meta["target_modules"]))
        trained_for = meta["text_encoder"]
    except Exception as err:  # safetensors' own errors, a missing or malformed metadata field
        raise LoraFileError(f"{path}: not a readable text-encoder LoRA file ({type(err).__name__}: {err})") from None
    if trained_for != type(encoder).__name__:
        return None
    modules = dict(encoder.named_modules())
    for key, tensor in state.items():
        module, _, part = key.rpartition(".lora_")
        layer = modules.get(module)
        if not isinstance(layer, torch.nn.Linear):
            raise LoraFileError(f"{path}: {key} adapts {module!r}, which is no linear layer of {type(encoder).__name__}")
        want = (config.r, layer.in_features) if part.startswith("A") else (layer.out_features, config.r)
        if tuple(tensor.shape) != want:
            raise LoraFileError(f"{path}: {key} has shape {tuple(tensor.shape)}; {module} needs {want}")
    return state, config


def add_text_encoder_adapter(encoder, name: str, config, state: dict | None = None) -> None:
    """Put a peft LoRA (`config`, weights `state` when given) into `encoder` as the adapter `name`. diffusers loads a
    text encoder's LoRA into CLIP only; peft puts it into any encoder, and `peft_config` is what diffusers'
    `set_adapters`, `disable_lora` and `unload_lora_weights` look for on a pipeline's text encoder."""
    from peft import inject_adapter_in_model, set_peft_model_state_dict

    inject_adapter_in_model(config, encoder, adapter_name=name)
    if state is not None:
        set_peft_model_state_dict(encoder, state, adapter_name=name)
    encoder.peft_config = {**(getattr(encoder, "peft_config", None) or {}), name: config}
    encoder._hf_peft_config_loaded = True


def loaded_adapters(pipe) -> list[str]:
    return sorted(getattr(pipe.unet, "peft_config", None) or {})


def load_lora(pipe, name: str, registry: LoraRegistry) -> None:
    """Load the registry's LoRA `name` into `pipe` as the adapter `name`, once; the file is checked first, so a
    bad file raises LoraFileError and leaves the pipeline exactly as it was."""
    entry = registry.get(name)
    path = Path(entry["path"])
    folder = path if path.is_dir() else path.parent
    # the UNet may be shared with pipelines behind other text encoders (each loads its own part once)
    unet_part = name not in loaded_adapters(pipe)
    text_file = folder / TEXT_ENCODER_LORA_NAME
    text = None
    if text_file.exists() and name not in (getattr(pipe.text_encoder, "peft_config", None) or {}):
        text = read_text_encoder_lora(text_file, pipe.text_encoder)
    if unet_part:
        read_lora_file(path, pipe.unet)
        pipe.load_lora_weights(str(folder), weight_name=WEIGHT_NAME if path.is_dir() else path.name, adapter_name=name)
    if text is not None:
        state, config = text
        add_text_encoder_adapter(pipe.text_encoder, name, config, state)


def trigger_embedding(entry: dict) -> Path | None:
    """A registry entry's trigger-token file (`LoraTrainConfig.trigger_token`), if its LoRA has one."""
    path = Path(entry["path"])
    file = (path if path.is_dir() else path.parent) / TRIGGER_EMBEDDING_NAME
    return file if file.exists() else None


def _sync_trigger_tokens(pipe, weights: dict[str, float], registry: LoraRegistry) -> None:
    """The trigger tokens of exactly the active LoRAs in `pipe`'s tokenizer: with none active, a prompt reads as it
    did before any LoRA was loaded (its trigger word as the pieces the tokenizer splits it into)."""
    # only the active LoRAs' folders and those whose tokens are loaded are looked at, not the whole registry's
    wanted = {e["trigger"]: f for e in map(registry.get, weights) if (f := trigger_embedding(e))}
    have = {t.content for t in pipe.tokenizer.added_tokens_decoder.values() if not t.special}
    stale = sorted({e["trigger"] for e in registry.entries.values()
                    if e["trigger"] in have - set(wanted) and trigger_embedding(e)})
    if stale:
        pipe.unload_textual_inversion(stale)
    for trigger in sorted(set(wanted) - have):
        pipe.load_textual_inversion(str(wanted[trigger].parent), weight_name=TRIGGER_EMBEDDING_NAME, token=trigger)


def apply_loras(pipe, weights: dict[str, float], registry: LoraRegistry) -> None:
    """Make exactly `weights` ({name: weight}) the active LoRAs of `pipe`: loads the ones not loaded yet, weights
    them with `set_adapters`; {} switches every LoRA off (they stay loaded for the next call)."""
    for name in weights:
        registry.get(name)  # every name is checked before anything is loaded
    for name in weights:
        load_lora(pipe, name, registry)
    _sync_trigger_tokens(pipe, weights, registry)
    if not weights:
        if loaded_adapters(pipe):
            pipe.disable_lora()
        return
    pipe.enable_lora()
    pipe.set_adapters(list(weights), list(weights.values()))


def unload_loras(pipe) -> None:
    """Remove every LoRA from `pipe` (the base UNet is as it was before any was loaded) and every token added to its
    tokenizer (the LoRAs' trigger tokens)."""
    if loaded_adapters(pipe):
        pipe.unload_lora_weights()
    if any(not t.special for t in pipe.tokenizer.added_tokens_decoder.values()):
        pipe.unload_textual_inversion()


def prompts_with_trigger(prompts: Sequence[str], entry: dict) -> list[str]:
    return [add_trigger(p, entry.get("trigger", ""), entry.get("trigger_position", "end")) for p in prompts]

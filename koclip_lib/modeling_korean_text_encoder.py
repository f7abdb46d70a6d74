"""The Korean student text encoder as a self-contained transformers model: any 🤗 encoder backbone, a resampler
head that outputs the teacher's 77 states, and a pooled head.

This file imports only torch and transformers, so a saved student folder carries it (`register_for_auto_class`
writes it beside the weights and an `auto_map` into config.json) and plain transformers loads the student where
koclip is not installed:

    model = AutoModel.from_pretrained("outputs/mini/student", trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained("outputs/mini/student")
    states = model(**tokenizer(["빨간 별"], return_tensors="pt")).last_hidden_state     # (1, 77, 768)

Training, losses and data are `koclip_lib.distill`.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling

# a student built on USE multilingual needs its backbone class; the relative import makes the saved folder carry it too
from .use_multilingual import UseMultilingualConfig  # noqa: F401

POOLED_FROM = ("mean", "backbone")


class KoreanTextEncoderConfig(PretrainedConfig):
    model_type = "koclip-korean-text-encoder"

    def __init__(self, backbone: dict | None = None, teacher_width: int = 768, num_positions: int = 77,
                 head_layers: int = 2, head_heads: int = 8, teacher: str = "", objective: str = "",
                 use_attention_mask: bool = True, pooled_from: str = "mean", **kwargs):
        super().__init__(**kwargs)
        self.backbone = backbone or {}
        self.teacher_width = teacher_width
        self.num_positions = num_positions  # SD 1.x reads exactly 77 text states
        self.head_layers = head_layers
        self.head_heads = head_heads
        self.teacher = teacher  # which teacher's space the outputs live in: checked before a swap
        self.objective = objective
        self.use_attention_mask = use_attention_mask  # SD's encode_prompt passes the mask only when this is set
        if pooled_from not in POOLED_FROM:
            raise ValueError(f"pooled_from={pooled_from!r}: expected one of {POOLED_FROM}")
        self.pooled_from = pooled_from  # "mean" of the token states, or the "backbone"'s own sentence vector

    @property
    def hidden_size(self) -> int:  # what SD-side code reads as the text encoder's width
        return self.teacher_width


class ResamplerLayer(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.norm_q, self.norm_kv, self.norm_self, self.norm_mlp = (nn.LayerNorm(width) for _ in range(4))
        self.cross = nn.MultiheadAttention(width, heads, batch_first=True)
        self.self_attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, queries, states, pad_mask):
        kv = self.norm_kv(states)
        queries = queries + self.cross(self.norm_q(queries), kv, kv, key_padding_mask=pad_mask, need_weights=False)[0]
        q = self.norm_self(queries)
        queries = queries + self.self_attn(q, q, q, need_weights=False)[0]
        return queries + self.mlp(self.norm_mlp(queries))


class ResamplerHead(nn.Module):
    """`num_positions` learned queries read the student's token states, then each other: any input length in,
    exactly the teacher's 77 positions out."""

    def __init__(self, in_dim: int, width: int, positions: int, layers: int, heads: int):
        super().__init__()
        self.proj_in = nn.Linear(in_dim, width)
        self.queries = nn.Parameter(torch.randn(positions, width) * 0.02)
        self.layers = nn.ModuleList(ResamplerLayer(width, heads) for _ in range(layers))
        self.norm_out = nn.LayerNorm(width)
        self.proj_out = nn.Linear(width, width)

    def forward(self, states, attention_mask):
        states = self.proj_in(states)
        x = self.queries.unsqueeze(0).expand(states.shape[0], -1, -1)
        pad_mask = attention_mask == 0
        for layer in self.layers:
            x = layer(x, states, pad_mask)
        return self.proj_out(self.norm_out(x))


class KoreanTextEncoder(PreTrainedModel):
    config_class = KoreanTextEncoderConfig
    base_model_prefix = "student"
    main_input_name = "input_ids"

    def __init__(self, config: KoreanTextEncoderConfig):
        super().__init__(config)
        backbone_config = AutoConfig.for_model(**config.backbone)
        self.backbone = AutoModel.from_config(backbone_config, add_pooling_layer=False) \
            if backbone_config.model_type in ("roberta", "bert", "xlm-roberta") else AutoModel.from_config(backbone_config)
        hidden = backbone_config.hidden_size
        self.head = ResamplerHead(hidden, config.teacher_width, config.num_positions, config.head_layers, config.head_heads)
        # the seed's design: mean-pool + linear; a sentence encoder's own vector (USE's) keeps what it was trained for
        self.pooled_head = nn.Linear(hidden, config.teacher_width)
        self.post_init()

    @classmethod
    def from_backbone(cls, backbone, teacher_width: int, backbone_kwargs: dict | None = None,
                      **config_kwargs) -> "KoreanTextEncoder":
        """A student around a backbone: a pretrained folder/hub id (full; `backbone_kwargs` such as a revision go to
        its `from_pretrained`) or a config to build at random (mini)."""
        if isinstance(backbone, PretrainedConfig):
            model = cls(KoreanTextEncoderConfig(backbone=backbone.to_dict(), teacher_width=teacher_width, **config_kwargs))
            return model
        pretrained = AutoModel.from_pretrained(backbone, **(backbone_kwargs or {}))
        model = cls(KoreanTextEncoderConfig(backbone=pretrained.config.to_dict(), teacher_width=teacher_width, **config_kwargs))
        model.backbone.load_state_dict(pretrained.state_dict(), strict=False)
        return model

    # a token added to the tokenizer (a LoRA's trigger, by diffusers' load_textual_inversion) is a new row of the
    # backbone's input embeddings
    def get_input_embeddings(self) -> nn.Module:
        return self.backbone.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.backbone.set_input_embeddings(value)

    def forward(self, input_ids=None, attention_mask=None, output_hidden_states=None, return_dict=None, **kwargs):
        if output_hidden_states:
            # SD's clip_skip reads CLIP's intermediate layers; the student is trained on the final states only
            raise ValueError("KoreanTextEncoder has no per-layer CLIP states: clip_skip / output_hidden_states are not supported")
        if attention_mask is None:
            attention_mask = (input_ids != self.config.backbone.get("pad_token_id", 1)).long()
        states, sentence = self.backbone_features(input_ids, attention_mask)
        out = BaseModelOutputWithPooling(last_hidden_state=self.head(states, attention_mask),
                                         pooler_output=self.pooled_head(sentence))
        return out if return_dict is not False else out.to_tuple()

    def backbone_features(self, input_ids, attention_mask):
        """(token states, the sentence vector the pooled head reads) of the backbone."""
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask)
        states = out.last_hidden_state
        if self.config.pooled_from == "backbone":
            if getattr(out, "pooler_output", None) is None:
                raise ValueError(f"pooled_from='backbone' needs a backbone with a sentence vector (pooler_output); "
                                 f"{self.config.backbone.get('model_type')} gives none here")
            return states, out.pooler_output
        mask = attention_mask.unsqueeze(-1).to(states.dtype)
        return states, (states * mask).sum(1) / mask.sum(1).clamp(min=1)


AutoConfig.register(KoreanTextEncoderConfig.model_type, KoreanTextEncoderConfig)
AutoModel.register(KoreanTextEncoderConfig, KoreanTextEncoder)

# save_pretrained copies this file into the folder and writes config.json's auto_map (trust_remote_code loading)
KoreanTextEncoderConfig.register_for_auto_class()
KoreanTextEncoder.register_for_auto_class("AutoModel")

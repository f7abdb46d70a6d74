"""Heads on frozen USE multilingual, fitted on notebook 02b's training pairs and scored on FLORES-200 devtest in the
teacher's space: the closed-form linear probe (what `distill.linear_probe` computes), an MLP, the linear map with an
in-batch contrastive term, and USE's own sentence head fine-tuned. The trials behind notebook 02b's choice of student.

    .venv/bin/python scripts/realtext_head_trials.py   # after notebook 02b has run once (reuses its corpus and teacher cache)

Prints one line per trial (ko->en R@1 and pooled cosine, and en->en) and writes outputs/metrics/02b_head_trials.json.
"""
import copy
import json
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from koclip_lib import distill, realtext  # noqa: E402
from koclip_lib.common import load_params, write_json  # noqa: E402


def main() -> int:
    torch.set_num_threads(1)
    params = load_params(REPO / "params/realtext.yaml")
    data = realtext.locate_data(params)
    if not data.complete:
        raise SystemExit(f"error: real-text data missing: {', '.join(data.missing)}")
    root = REPO / params["root"]
    corpus_dir = realtext.ensure_corpus(params, data, root)
    teacher, teacher_tok = realtext.load_cached_teacher(params, realtext.teacher_texts(corpus_dir, data), root)
    use_dir = realtext.ensure_use_backbone(root)
    from transformers import AutoModel, AutoTokenizer

    use, tok = AutoModel.from_pretrained(use_dir).eval(), AutoTokenizer.from_pretrained(use_dir)

    @torch.no_grad()
    def features(texts):  # (USE's sentence vector, its summed token states: what its sentence head reads)
        pooled, summed = [], []
        for i in range(0, len(texts), 128):
            enc = tok(texts[i:i + 128], padding=True, truncation=True, max_length=96, return_tensors="pt")
            out = use(**enc)
            pooled.append(out.pooler_output)
            summed.append(out.last_hidden_state.sum(1) / enc.attention_mask.sum(1, keepdim=True).sqrt())
        return torch.cat(pooled), torch.cat(summed)

    @torch.no_grad()
    def teacher_pooled(texts):
        return F.normalize(torch.cat([distill.encode(teacher, teacher_tok, texts[i:i + 256]).pooler_output
                                      for i in range(0, len(texts), 256)]), dim=-1)

    pairs = distill.load_pairs(corpus_dir, "train")
    (ko_p, ko_s), (en_p, en_s) = features([k for k, _ in pairs]), features([e for _, e in pairs])
    y = teacher_pooled([e for _, e in pairs])
    test_ko, test_en = realtext.read_lines(data.test_ko), realtext.read_lines(data.test_en)
    (tko_p, tko_s), (ten_p, ten_s), y_test = features(test_ko), features(test_en), teacher_pooled(test_en)

    def score(head, ko, en):
        with torch.no_grad():
            out = {}
            for side, x in (("ko", ko), ("en", en)):
                p = F.normalize(head(x), dim=-1)
                out[f"{side} R@1"] = float(((p @ y_test.T).argmax(1) == torch.arange(len(p))).float().mean())
                out[f"{side} cos"] = float((p * y_test).sum(-1).mean())
            return out

    def train(head, x_ko, x_en, epochs=40, lr=2e-3, head_lr=None, contrastive=0.0, mlp_dropout=None):
        torch.manual_seed(0)
        groups = [{"params": [p for n, p in head.named_parameters() if n.startswith("out")], "lr": lr}]
        rest = [p for n, p in head.named_parameters() if not n.startswith("out")]
        if rest:
            groups.append({"params": rest, "lr": head_lr if head_lr is not None else lr})
        opt = torch.optim.AdamW(groups, weight_decay=1e-4)
        for _ in range(epochs):
            perm = torch.randperm(len(y))
            for i in range(0, len(y), 64):
                b = perm[i:i + 64]
                loss = 0
                for x in (x_ko, x_en):
                    p = head(x[b])
                    loss = loss + (1 - F.cosine_similarity(p, y[b])).mean()
                    if contrastive:
                        loss = loss + contrastive * F.cross_entropy(F.normalize(p, dim=-1) @ y[b].T / 0.05, torch.arange(len(b)))
                opt.zero_grad()
                loss.backward()
                opt.step()
        return head.eval()

    class Linear(nn.Module):
        def __init__(self):
            super().__init__()
            self.out = nn.Linear(512, y.shape[1])

        def forward(self, x):
            return self.out(x)

    class Mlp(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(512, width), nn.GELU(), nn.Dropout(0.1), nn.Linear(width, width), nn.GELU())
            self.out = nn.Linear(width, y.shape[1])

        def forward(self, x):
            return self.out(self.body(x))

    class SentenceHead(nn.Module):  # USE's own deep-averaging head (a copy, trainable) + a linear map
        def __init__(self):
            super().__init__()
            for name in ("d0", "p1", "d1", "d2", "p3", "d3"):
                setattr(self, name, copy.deepcopy(getattr(use, name)))
            self.out = nn.Linear(512, y.shape[1])

        def forward(self, x):
            y0 = torch.relu(self.d0(x))
            y1 = torch.relu(self.p1(x) + self.d1(y0))
            z = torch.tanh(self.p3(y1) + self.d3(torch.relu(self.d2(y1))))
            return self.out(F.normalize(z, dim=-1))

    # the linear probe in closed form: ridge on [ko; en] -> teacher(en), with a bias
    x = torch.cat([torch.cat([ko_p, en_p]), torch.ones(2 * len(y), 1)], 1).double()
    gram = x.T @ x
    w = torch.linalg.solve(gram + 1e-2 * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype),
                           x.T @ torch.cat([y, y]).double()).float()
    probe = lambda v: torch.cat([v, torch.ones(len(v), 1)], 1) @ w  # noqa: E731
    trials = {"linear probe, closed form (ridge)": score(probe, tko_p, ten_p)}
    trials["linear, cosine loss, 40 epochs"] = score(train(Linear(), ko_p, en_p), tko_p, ten_p)
    for weight in (0.1, 1.0):
        trials[f"linear + contrastive x{weight} (tau 0.05)"] = score(train(Linear(), ko_p, en_p, contrastive=weight), tko_p, ten_p)
    for width in (1024, 2048):
        trials[f"MLP {width} wide, 60 epochs"] = score(train(Mlp(width), ko_p, en_p, epochs=60, lr=1e-3), tko_p, ten_p)
    for head_lr in (1e-4, 3e-4):
        trials[f"USE's sentence head fine-tuned (lr {head_lr})"] = score(train(SentenceHead(), ko_s, en_s, head_lr=head_lr),
                                                                        tko_s, ten_s)
    for name, row in trials.items():
        print(f"{name:45s} " + "  ".join(f"{k} {v:.3f}" for k, v in row.items()), flush=True)
    write_json(REPO / params["metrics_dir"] / "02b_head_trials.json", {"train_pairs": len(pairs), "trials": trials})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

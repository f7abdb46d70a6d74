"""The mini world: coloured shapes with English and Korean captions, small enough to train everything on a CPU.

Every later stage (teacher CLIP, generator, Korean student, LoRAs, service) is trained and measured here first.
Read top to bottom: vocabulary -> scenes -> renderer -> captions -> parallel corpus -> attribute classifier.
"""

from __future__ import annotations

import csv
import io
import math
import random
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFilter
from tqdm.auto import tqdm

# ---------------------------------------------------------------------------------------------------------------
# Vocabulary. Fixed: later stages and every evaluation TSV use these English attribute names.
# Korean surface forms per attribute; the first form of a colour is the adjective (빨간 원), the others are nouns.
# ---------------------------------------------------------------------------------------------------------------
COLORS: dict[str, list[str]] = {
    "red": ["빨간", "빨간색", "빨강"],
    "orange": ["주황", "주황색"],
    "yellow": ["노란", "노란색", "노랑"],
    "green": ["초록", "초록색", "녹색"],
    "blue": ["파란", "파란색", "파랑"],
    "purple": ["보라", "보라색"],
    "pink": ["분홍", "분홍색", "핑크"],
    "black": ["검은", "검은색", "검정"],
}
COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "purple": (130, 40, 180),
    "pink": (250, 130, 190),
    "black": (25, 25, 25),
}
SHAPES: dict[str, list[str]] = {
    "circle": ["원", "동그라미"],
    "square": ["사각형", "네모"],
    "triangle": ["삼각형", "세모"],
    "star": ["별"],
    "heart": ["하트"],
}
POSITIONS: dict[str, list[str]] = {
    "left": ["왼쪽"],
    "right": ["오른쪽"],
    "top": ["위", "위쪽"],
    "bottom": ["아래", "아래쪽"],
    "centre": ["가운데", "중앙"],
}
STYLES: dict[str, list[str]] = {
    "plain": [],
    "ink": ["백묘법"],
}
ATTRIBUTES: dict[str, list[str]] = {
    "color": list(COLORS),
    "shape": list(SHAPES),
    "position": list(POSITIONS),
    "style": list(STYLES),
}
# Where the centre of a shape sits, as a fraction of the image side (x, y).
POSITION_XY = {"left": (0.27, 0.5), "right": (0.73, 0.5), "top": (0.5, 0.27), "bottom": (0.5, 0.73), "centre": (0.5, 0.5)}


@dataclass
class WorldConfig:
    image_size: int = 32
    # colour-shape combinations never shown to the generator or student in training, to measure generalisation
    heldout: list[list[str]] = field(
        default_factory=lambda: [["red", "star"], ["blue", "heart"], ["green", "triangle"], ["yellow", "square"], ["purple", "circle"], ["black", "star"]]
    )
    # styles of the corpus and the evaluation prompts: the students learn plain captions only, so a Korean style word
    # is new to them (what a LoRA's trigger binds); the UNet's own styles are UNetConfig.styles
    styles: list[str] = field(default_factory=lambda: ["plain"])
    position_in_caption: float = 0.85  # share of captions that say where the shape is

    @classmethod
    def from_params(cls, params: dict | None) -> "WorldConfig":
        return cls(**(params or {}))

    def is_heldout(self, color: str, shape: str) -> bool:
        return [color, shape] in self.heldout


@dataclass(frozen=True)
class Scene:
    color: str
    shape: str
    position: str
    style: str = "plain"

    def __post_init__(self):
        for name, value in asdict(self).items():
            if value not in ATTRIBUTES[name]:
                raise ValueError(f"unknown {name} {value!r}; known: {', '.join(ATTRIBUTES[name])}")


def sample_scenes(n: int, seed: int, world: WorldConfig, split: str = "seen", styles: Sequence[str] | None = None) -> list[Scene]:
    """`n` random scenes. split='seen' avoids held-out colour-shape pairs, 'heldout' uses only them, 'all' anything."""
    rng = random.Random(seed)
    styles = list(styles or world.styles)
    combos = [(c, s) for c in COLORS for s in SHAPES]
    if split == "seen":
        combos = [cs for cs in combos if not world.is_heldout(*cs)]
    elif split == "heldout":
        combos = [cs for cs in combos if world.is_heldout(*cs)]
    elif split != "all":
        raise ValueError(f"split must be seen, heldout or all, not {split!r}")
    return [Scene(*rng.choice(combos), rng.choice(list(POSITIONS)), rng.choice(styles)) for _ in range(n)]


# ---------------------------------------------------------------------------------------------------------------
# Renderer. Drawn at 4x and downsampled for anti-aliased edges; jitter in size, place and rotation is seeded.
# ---------------------------------------------------------------------------------------------------------------
def _shape_polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    def rotate(points):
        ca, sa = math.cos(angle), math.sin(angle)
        return [(cx + x * ca - y * sa, cy + x * sa + y * ca) for x, y in points]

    if shape == "circle":
        return [(cx + r * math.cos(t), cy + r * math.sin(t)) for t in np.linspace(0, 2 * math.pi, 48, endpoint=False)]
    if shape == "square":
        s = r * 0.85
        return rotate([(-s, -s), (s, -s), (s, s), (-s, s)])
    if shape == "triangle":
        return rotate([(0, -r), (r * 0.95, r * 0.75), (-r * 0.95, r * 0.75)])
    if shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.42
            t = -math.pi / 2 + k * math.pi / 5
            pts.append((rad * math.cos(t), rad * math.sin(t)))
        return rotate(pts)
    if shape == "heart":
        pts = []
        for t in np.linspace(0, 2 * math.pi, 60, endpoint=False):
            x = 16 * math.sin(t) ** 3
            y = -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t))
            pts.append((x * r / 16.5, (y + 2) * r / 16.5))
        return rotate(pts)
    raise ValueError(f"unknown shape {shape!r}")


def render(scene: Scene, seed: int, size: int = 32) -> Image.Image:
    """One RGB image of `scene`. Same scene and seed -> same pixels."""
    rng = np.random.default_rng(seed)
    scale = 4
    big = size * scale
    fx, fy = POSITION_XY[scene.position]
    cx = (fx + rng.uniform(-0.04, 0.04)) * big
    cy = (fy + rng.uniform(-0.04, 0.04)) * big
    r = rng.uniform(0.19, 0.23) * big
    angle = math.radians(rng.uniform(-12, 12))
    poly = _shape_polygon(scene.shape, cx, cy, r, angle)
    color = np.array(COLOR_RGB[scene.color], dtype=np.float32)

    if scene.style == "plain":
        bg = np.full((big, big, 3), 245, np.float32) + rng.uniform(-8, 8, size=3)
        img = Image.fromarray(bg.clip(0, 255).astype(np.uint8))
        ImageDraw.Draw(img).polygon(poly, fill=tuple(int(v) for v in (color + rng.uniform(-12, 12, 3)).clip(0, 255)))
        return img.resize((size, size), Image.LANCZOS)

    # ink-wash (백묘법): warm paper with grain, a mottled wash of the colour, a dark uneven brush outline
    paper = np.array([236, 226, 200], np.float32) + rng.normal(0, 7, size=(big, big, 1))
    img = Image.fromarray(paper.clip(0, 255).astype(np.uint8))
    mask = Image.new("L", (big, big), 0)
    ImageDraw.Draw(mask).polygon(poly, fill=255)
    wash = 0.55 * color + 0.45 * np.array([236, 226, 200], np.float32)
    wash_layer = wash + rng.normal(0, 14, size=(big, big, 1))
    img.paste(Image.fromarray(wash_layer.clip(0, 255).astype(np.uint8)), (0, 0), mask)
    draw = ImageDraw.Draw(img)
    width = int(rng.integers(5, 8))
    jittered = [(x + rng.normal(0, 1.5), y + rng.normal(0, 1.5)) for x, y in poly]
    draw.line(jittered + [jittered[0]], fill=(30, 28, 26), width=width, joint="curve")
    img = img.filter(ImageFilter.GaussianBlur(1.5))
    return img.resize((size, size), Image.LANCZOS)


def render_batch(scenes: Sequence[Scene], seed: int, size: int = 32) -> torch.Tensor:
    """Scenes as a float tensor (N, 3, H, W) in [-1, 1], the range diffusers' VAEs use."""
    arr = np.stack([np.asarray(render(s, seed * 1_000_003 + i, size)) for i, s in enumerate(scenes)])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(N, 3, H, W) in [-1, 1] -> PIL images."""
    arr = ((images.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]


# ---------------------------------------------------------------------------------------------------------------
# Captions. English and Korean are written independently from the scene (never a word-for-word gloss):
# Korean puts the place first, uses particles chosen by the last syllable, counters and several sentence endings.
# ---------------------------------------------------------------------------------------------------------------
EN_POSITION = {
    "left": ["on the left", "on the left side"],
    "right": ["on the right", "on the right side"],
    "top": ["at the top", "near the top"],
    "bottom": ["at the bottom", "near the bottom"],
    "centre": ["in the centre", "in the center", "in the middle"],
}
EN_TEMPLATES_POS = [
    "{a} {c} {s} {p}",
    "{c} {s} {p}",
    "there is {a} {c} {s} {p}",
    "a picture of {a} {c} {s} {p}",
    "{P}, {a} {c} {s}",
    "one {c} {s} {p}",
    "a drawing of a {s} in {c}, {p}",
]
EN_TEMPLATES_NOPOS = ["{a} {c} {s}", "{c} {s}", "a picture of {a} {c} {s}", "a single {c} {s}", "a {s} in {c}"]
EN_STYLE = ["an ink wash painting of {x}", "{x}, ink wash style", "{x} in ink-wash style"]

KO_TEMPLATES_POS = [
    "{p}에 {c} {s}{이} 있다",
    "{p}에 {c} {s}{이} 있습니다",
    "{c} {s} 한 개가 {p}에 있습니다",
    "{p}에 있는 {c} {s}",
    "{p}에 {c} {s} 하나가 그려져 있다",
    "{c} {s}{이} {p}에 있는 그림입니다",
    "{p}에 {c} {s}{이} 보입니다",
    "{p}에 {cn}인 {s}{이} 하나 있어요",
]
KO_TEMPLATES_NOPOS = ["{c} {s}", "{c} {s} 하나", "{c} {s}{을} 그린 그림", "{cn} {s} 한 개입니다", "{s}{이} {cn}입니다"]
KO_STYLE = ["{x}, 수묵화", "수묵화 스타일: {x}", "{x} (먹으로 그린 그림)"]


# Held-out phrasing: frames that neither the corpus, nor a LoRA's captions, nor its preservation captions ever use,
# in several families, so an evaluation can ask whether a model follows (or a LoRA's trigger gates on) the words and
# not the sentence shapes it was trained on. Slots as above, plus {ce} / {se}: the English colour and shape words.
KO_HELDOUT_FRAMES: dict[str, tuple[str, str]] = {  # name: (family, template)
    "흰 배경 위에 … 하나가 놓여 있다": ("description", "흰 배경 위에 {c} {s} 하나가 놓여 있다"),
    "그림에는 … 하나만 보인다": ("description", "그림에는 {c} {s} 하나만 보인다"),
    "이 이미지에는 …이 한 개 있다": ("description", "이 이미지에는 {c} {s}{이} 한 개 있다"),
    "… 하나만 서 있는 장면": ("scene", "{c} {s} 하나만 서 있는 장면"),
    "조용한 화면 속 …": ("scene", "조용한 화면 속 {c} {s}"),
    "…, 색깔은 …": ("fragment", "{s}, 색깔은 {cn}"),
    "모양은 …, 색은 …": ("fragment", "모양은 {s}, 색은 {cn}"),
    "… 하나를 그려 줘": ("request", "{c} {s} 하나를 그려 줘"),
    "…을 그려 주세요": ("request", "{c} {s}{을} 그려 주세요"),
    "아이가 그린 …": ("request", "아이가 그린 {c} {s}"),
    "봐, …이 있어": ("request", "봐, {c} {s}{이} 있어"),
    "… (English shape)": ("mixed ko/en", "{c} {se}"),
    "(English colour) …": ("mixed ko/en", "{ce} {s} 하나"),
}
EN_HELDOUT_FRAMES: dict[str, tuple[str, str]] = {
    "on a white background there is one …": ("description", "on a white background there is one {c} {s}"),
    "the picture shows only one …": ("description", "the picture shows only one {c} {s}"),
    "a scene where a single … stands": ("scene", "a scene where a single {c} {s} stands"),
    "…, its colour is …": ("fragment", "{s}, its colour is {c}"),
    "shape: …, colour: …": ("fragment", "shape: {s}, colour: {c}"),
    "draw one …": ("request", "draw one {c} {s}"),
    "a child's drawing of …": ("request", "a child's drawing of {a} {c} {s}"),
    "look, there is …": ("request", "look, there is {a} {c} {s}"),
}
HELDOUT_FRAMES = {"ko": KO_HELDOUT_FRAMES, "en": EN_HELDOUT_FRAMES}


def has_final_consonant(word: str) -> bool:
    """True if the last Hangul syllable ends in a consonant (받침): picks 이/가, 을/를, 은/는."""
    last = word[-1]
    if not ("가" <= last <= "힣"):
        return False
    return (ord(last) - ord("가")) % 28 != 0


def _particle(word: str, with_final: str, without_final: str) -> str:
    return with_final if has_final_consonant(word) else without_final


def _says_position(rng: random.Random, world: WorldConfig, with_position: bool | None) -> bool:
    return rng.random() < world.position_in_caption if with_position is None else with_position


def caption_en(scene: Scene, rng: random.Random, world: WorldConfig | None = None, with_position: bool | None = None) -> str:
    """An English caption; `with_position` forces whether it states the place (default: at random)."""
    world = world or WorldConfig()
    c, s = scene.color, scene.shape
    fill = {"c": c, "s": s, "a": "an" if c[0] in "aeiou" else "a"}
    if _says_position(rng, world, with_position):
        p = rng.choice(EN_POSITION[scene.position])
        text = rng.choice(EN_TEMPLATES_POS).format(p=p, P=p[0].upper() + p[1:], **fill)
    else:
        text = rng.choice(EN_TEMPLATES_NOPOS).format(**fill)
    if scene.style == "ink":
        text = rng.choice(EN_STYLE).format(x=text)
    return text


def caption_ko(scene: Scene, rng: random.Random, world: WorldConfig | None = None, with_position: bool | None = None) -> str:
    """A Korean caption, written from the scene (not from the English one)."""
    world = world or WorldConfig()
    c = rng.choice(COLORS[scene.color])
    cn = rng.choice(COLORS[scene.color][1:] or COLORS[scene.color])  # noun forms for "~인", "~입니다"
    s = rng.choice(SHAPES[scene.shape])
    fill = {"c": c, "cn": cn, "s": s, "이": _particle(s, "이", "가"), "을": _particle(s, "을", "를")}
    if _says_position(rng, world, with_position):
        text = rng.choice(KO_TEMPLATES_POS).format(p=rng.choice(POSITIONS[scene.position]), **fill)
    else:
        text = rng.choice(KO_TEMPLATES_NOPOS).format(**fill)
    if scene.style == "ink":
        text = rng.choice(KO_STYLE).format(x=text)
    return text


def caption_in_frame(scene: Scene, template: str, rng: random.Random, lang: str = "ko") -> str:
    """The scene's colour and shape in one frame (`KO_HELDOUT_FRAMES` / `EN_HELDOUT_FRAMES` templates)."""
    c, s = scene.color, scene.shape
    if lang == "en":
        return template.format(c=c, s=s, a="an" if c[0] in "aeiou" else "a")
    ko_shape = rng.choice(SHAPES[s])
    return template.format(c=rng.choice(COLORS[c]), cn=rng.choice(COLORS[c][1:] or COLORS[c]), s=ko_shape, ce=c, se=s,
                           이=_particle(ko_shape, "이", "가"), 을=_particle(ko_shape, "을", "를"))


def caption_pair(scene: Scene, rng: random.Random, world: WorldConfig | None = None) -> tuple[str, str]:
    """A (Korean, English) caption pair of one scene that agree on whether they state the place."""
    world = world or WorldConfig()
    with_position = rng.random() < world.position_in_caption
    return caption_ko(scene, rng, world, with_position), caption_en(scene, rng, world, with_position)


def caption_mentions_position(scene: Scene, text: str) -> bool:
    """Whether a caption (either language) states the scene's position; captions may leave it out."""
    words = EN_POSITION[scene.position] + POSITIONS[scene.position]
    return any(w in text for w in words)


# ---------------------------------------------------------------------------------------------------------------
# Parallel corpus, written in the AI Hub CSV layout (extra columns included) so it takes the real data's path.
# ---------------------------------------------------------------------------------------------------------------
AIHUB_HEADER = ["ID", "대분류", "소분류", "원문", "번역문"]


def write_aihub_csv(path: str | Path, n_pairs: int, seed: int, world: WorldConfig, split: str = "seen",
                    styles: Sequence[str] | None = None) -> Path:
    """`n_pairs` (Korean, English) caption pairs of random scenes, one row each, in AI Hub's CSV columns."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed + 17)
    scenes = sample_scenes(n_pairs, seed, world, split=split, styles=styles)
    with open(path, "w", encoding="utf-8-sig", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(AIHUB_HEADER)
        for i, scene in enumerate(scenes):
            # a translation pair states the place on both sides or on neither
            writer.writerow([f"MINI-{i:07d}", "미니월드", scene.shape, *caption_pair(scene, rng, world)])
    return path


def write_prompt_tsv(path: str | Path, scenes: Iterable[Scene], lang: str, seed: int, world: WorldConfig | None = None) -> Path:
    """An evaluation TSV (prompt, color, shape, position, style) for `koclip_lib.evaluate`.

    The position column is filled only when the prompt states it, so an unstated place is not scored.
    """
    from ..common import write_text_atomic

    rng = random.Random(seed)
    caption = {"en": caption_en, "ko": caption_ko}[lang]
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(["prompt", "color", "shape", "position", "style"])
    for scene in scenes:
        text = caption(scene, rng, world)
        position = scene.position if caption_mentions_position(scene, text) else ""
        writer.writerow([text, scene.color, scene.shape, position, scene.style])
    return write_text_atomic(path, buffer.getvalue())  # every notebook rewrites these files; others may be reading


def write_frame_prompts(path: str | Path, lang: str, world: WorldConfig, n: int, seed: int) -> Path:
    """The evaluation held out by phrasing: for every held-out frame of `lang`, the same `n` scenes of held-out and
    `n` of seen colour-shape pairs written in that frame. The prompt TSV's columns plus `frame`, `family` and
    `pairs` (held-out / seen), which `koclip_lib.lora.evaluate_frames` groups by."""
    from ..common import write_text_atomic

    rng = random.Random(seed)
    scenes = {pairs: sample_scenes(n, seed, world, split=split) for pairs, split in (("held-out", "heldout"), ("seen", "seen"))}
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(["prompt", "color", "shape", "position", "style", "frame", "family", "pairs"])
    for frame, (family, template) in HELDOUT_FRAMES[lang].items():
        for pairs, chosen in scenes.items():
            for scene in chosen:
                writer.writerow([caption_in_frame(scene, template, rng, lang), scene.color, scene.shape, "", scene.style,
                                 frame, family, pairs])
    return write_text_atomic(path, buffer.getvalue())


# ---------------------------------------------------------------------------------------------------------------
# Attribute classifier: the judge that scores generated images. A small CNN with one head per attribute.
# ---------------------------------------------------------------------------------------------------------------
class AttributeClassifier(nn.Module):
    """The mini world's judge: reads colour, shape, position and style from an image (`evaluate.score` uses any
    judge with `attributes` and `predict`)."""

    attributes = ATTRIBUTES

    def __init__(self, width: int = 32):
        super().__init__()

        def block(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                                 nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())

        self.features = nn.Sequential(block(3, width), nn.MaxPool2d(2), block(width, width * 2), nn.MaxPool2d(2),
                                      block(width * 2, width * 4), nn.AdaptiveAvgPool2d(4), nn.Flatten())
        self.heads = nn.ModuleDict({name: nn.Linear(width * 4 * 16, len(values)) for name, values in ATTRIBUTES.items()})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.features(images)
        return {name: head(h) for name, head in self.heads.items()}

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 256) -> dict[str, list[str]]:
        """Attribute names for images in [-1, 1] of any size (resized to the size it was trained on)."""
        self.eval()
        size = getattr(self, "image_size", images.shape[-1])
        if images.shape[-1] != size:
            images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out: dict[str, list[str]] = {name: [] for name in ATTRIBUTES}
        for start in range(0, len(images), batch_size):
            logits = self(images[start:start + batch_size].float())
            for name, values in ATTRIBUTES.items():
                out[name] += [values[i] for i in logits[name].argmax(-1).tolist()]
        return out


def _labels(scenes: Sequence[Scene]) -> dict[str, torch.Tensor]:
    return {name: torch.tensor([values.index(getattr(s, name)) for s in scenes]) for name, values in ATTRIBUTES.items()}


def _degrade(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Blur and noise like a small VAE's reconstructions, so the judge also reads generated images."""
    n = len(images)
    blur = torch.rand(n, generator=gen) < 0.5
    if blur.any():
        k = torch.tensor([0.25, 0.5, 0.25])
        kernel = (k[:, None] * k[None, :]).expand(3, 1, 3, 3)
        images = torch.where(blur[:, None, None, None], F.conv2d(images, kernel, padding=1, groups=3), images)
    noise = torch.randn(images.shape, generator=gen) * torch.rand(n, 1, 1, 1, generator=gen) * 0.12
    return (images + noise).clamp(-1, 1)


@torch.no_grad()
def vae_round_trip(vae, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """`images` after `vae`'s encode and decode (the latent mean): what a generator decoding through it can show."""
    return torch.cat([vae.decode(vae.encode(images[i:i + batch_size]).latent_dist.mean).sample.clamp(-1, 1)
                      for i in range(0, len(images), batch_size)])


def train_classifier(out_dir: str | Path, world: WorldConfig, n_train: int = 16000, epochs: int = 6, batch_size: int = 128,
                     lr: float = 2e-3, seed: int = 0, width: int = 32, vae=None, round_trip_prob: float = 0.0) -> dict:
    """Train the judge on fresh renders of every combination and both styles; save weights + metrics.

    The judge reads decoded images, and a small VAE shifts colours (most of all in ink-wash washes): given `vae` (an
    AutoencoderKL), each training image is its VAE round-trip with probability `round_trip_prob`, else the render."""
    from safetensors.torch import save_file

    torch.manual_seed(seed)  # initial weights depend on the seed alone
    scenes = sample_scenes(n_train, seed, world, split="all", styles=list(STYLES))
    images = render_batch(scenes, seed, world.image_size)
    labels = _labels(scenes)
    round_trips = vae_round_trip(vae, images) if vae is not None and round_trip_prob > 0 else None
    model = AttributeClassifier(width)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * math.ceil(n_train / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    history = []
    bar = tqdm(total=steps, desc="classifier", mininterval=5)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(n_train, generator=gen)
        for start in range(0, n_train, batch_size):
            idx = perm[start:start + batch_size]
            batch = images[idx]
            if round_trips is not None:
                use = torch.rand(len(idx), generator=gen) < round_trip_prob
                batch = torch.where(use[:, None, None, None], round_trips[idx], batch)
            logits = model(_degrade(batch, gen))
            loss = sum(F.cross_entropy(logits[k], labels[k][idx]) for k in ATTRIBUTES)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
        history.append({"epoch": epoch, "loss": loss.item()})
    bar.close()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), str(out_dir / "classifier.safetensors"))
    metrics = {"history": history, "width": width, "image_size": world.image_size,
               "test_accuracy": classifier_accuracy(model, world, n=2000, seed=seed + 1)}
    if round_trips is not None:
        metrics["round_trip_prob"] = round_trip_prob
        metrics["round_trip_accuracy"] = classifier_accuracy(model, world, n=2000, seed=seed + 1, vae=vae)
    from ..common import write_json

    write_json(out_dir / "classifier.json", metrics)
    write_json(out_dir / "judge.json", {"loader": "koclip_lib.miniworld.world:load_classifier"})  # evaluate.load_judge
    return metrics


def load_classifier(out_dir: str | Path) -> AttributeClassifier:
    import json

    from safetensors.torch import load_file

    out_dir = Path(out_dir)
    meta = json.loads((out_dir / "classifier.json").read_text(encoding="utf-8"))
    model = AttributeClassifier(meta["width"])
    model.load_state_dict(load_file(str(out_dir / "classifier.safetensors")))
    model.image_size = meta["image_size"]
    return model.eval()


def rendered_scenes(world: WorldConfig, n: int, seed: int, split: str = "all", styles: Sequence[str] | None = None,
                    vae=None) -> tuple[torch.Tensor, list[Scene]]:
    """`n` fresh scenes (of `styles`, default all) and their renders, after `vae`'s encode and decode when given."""
    scenes = sample_scenes(n, seed, world, split=split, styles=list(styles or STYLES))
    images = render_batch(scenes, seed, world.image_size)
    return (vae_round_trip(vae, images.to(vae.device)).cpu() if vae is not None else images), scenes


def classifier_accuracy(model: AttributeClassifier, world: WorldConfig, n: int = 2000, seed: int = 12345,
                        vae=None, split: str = "all", styles: Sequence[str] | None = None) -> dict[str, float]:
    """Accuracy per attribute on freshly rendered images (all combinations and styles unless `split` / `styles` say
    otherwise) with unseen seeds; with `vae`, on their VAE round-trips."""
    images, scenes = rendered_scenes(world, n, seed, split, styles, vae)
    model.image_size = world.image_size
    pred = model.predict(images)
    return {name: float(np.mean([p == getattr(s, name) for p, s in zip(pred[name], scenes)])) for name in ATTRIBUTES}


# ---------------------------------------------------------------------------------------------------------------
# The main job's entry points: cached under the profile's root by config.
# ---------------------------------------------------------------------------------------------------------------
def ensure_world_corpus(params: dict, root: str | Path = "outputs/mini") -> Path:
    """Write the mini world's captions as an AI Hub CSV and build them with koclip_lib.corpus (the real data's path)."""
    from ..common import cached_artifact
    from ..corpus import BuildConfig, build_corpus

    world = WorldConfig.from_params(params.get("world"))
    cfg = params.get("corpus", {})
    key = {"world": params.get("world"), "corpus": cfg, "seed": params.get("seed", 0)}

    def build(out_dir: Path):
        raw = write_aihub_csv(out_dir / "raw" / "miniworld_aihub.csv", cfg.get("n_pairs", 30000), params.get("seed", 0), world)
        build_corpus([raw], out_dir, BuildConfig(val_frac=cfg.get("val_frac", 0.05), test_frac=cfg.get("test_frac", 0.05),
                                                 progress=False))

    return cached_artifact(Path(root) / "corpus", key, build)


def ensure_classifier(params: dict, root: str | Path = "outputs/mini") -> Path:
    """Train (or reuse) the judge. It reads what the generator decodes, so, with `classifier.round_trip_prob` > 0, it
    also learns from the profile's VAE round-trips (the VAE is trained first, or reused)."""
    from ..common import artifact_hash, cached_artifact

    world = WorldConfig.from_params(params.get("world"))
    cfg = dict(params.get("classifier", {}))
    key = {"world": params.get("world"), "classifier": cfg}
    vae_dir = None
    if cfg.get("round_trip_prob", 0) > 0:
        from .generator import ensure_vae

        vae_dir = ensure_vae(params, root)
        key["vae"] = artifact_hash(vae_dir)

    def build(out_dir: Path):
        vae = None
        if vae_dir is not None:
            from diffusers import AutoencoderKL

            vae = AutoencoderKL.from_pretrained(vae_dir).eval()
        train_classifier(out_dir, world, vae=vae, **cfg)

    return cached_artifact(Path(root) / "classifier", key, build)


def ensure_eval_prompts(params: dict, root: str | Path = "outputs/mini") -> dict[str, Path]:
    """Evaluation TSVs for seen and held-out colour-shape pairs, in English and Korean, for the same scenes; English
    ones asking for those scenes in each other style (`en_ink_seen`: "an ink wash painting of ..."); and, per
    language, the same kind of scenes in the held-out frames (`ko_frames`, `write_frame_prompts`)."""
    world = WorldConfig.from_params(params.get("world"))
    n = params.get("evaluate", {}).get("n_prompts", 200)
    seed = params.get("seed", 0) + 555
    prompts_dir = Path(root) / "prompts"
    out = {}
    for split in ("seen", "heldout"):
        scenes = sample_scenes(n, seed, world, split=split)
        for lang in ("en", "ko"):
            out[f"{lang}_{split}"] = write_prompt_tsv(prompts_dir / f"{lang}_{split}.tsv", scenes, lang, seed, world)
        for style in (s for s in STYLES if s not in world.styles):
            styled = [replace(scene, style=style) for scene in scenes]
            out[f"en_{style}_{split}"] = write_prompt_tsv(prompts_dir / f"en_{style}_{split}.tsv", styled, "en", seed, world)
    n_frame = params.get("evaluate", {}).get("n_frame_prompts", 20)
    for lang in HELDOUT_FRAMES:
        out[f"{lang}_frames"] = write_frame_prompts(prompts_dir / f"{lang}_frames.tsv", lang, world, n_frame, seed + 1)
    return out


def vae_round_trip_accuracy(vae, classifier, world, style: str = "plain", n: int = 400,
                            seed: int = 7) -> dict:
    """What any generator decoding through `vae` can reach: the classifier's accuracy on rendered scenes of `style`
    (seen colour-shape pairs) after the VAE's encode and decode."""
    accuracy = classifier_accuracy(classifier, world, n, seed, vae=vae, split="seen", styles=[style])
    return {name: accuracy[name] for name in ("color", "shape", "style")}


def vae_round_trip_probe(vae, world, style: str = "ink", n_train: int = 4000, n_test: int = 1000, epochs: int = 6,
                         seed: int = 11) -> float:
    """Whether colour survives `vae` or only leaves the judge's training domain: a fresh colour classifier (the judge's
    architecture) trained on VAE round-trips of `style` renders, its accuracy on other round-trips."""
    import torch.nn.functional as F

    def round_trips(n, s):
        decoded, scenes = rendered_scenes(world, n, s, "all", [style], vae)
        return decoded, torch.tensor([list(COLORS).index(sc.color) for sc in scenes])

    (x, y), (x_test, y_test) = round_trips(n_train, seed), round_trips(n_test, seed + 1)
    torch.manual_seed(seed)
    probe = AttributeClassifier(16)
    opt = torch.optim.AdamW(probe.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 128):
            idx = perm[i:i + 128]
            loss = F.cross_entropy(probe(x[idx])["color"], y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return float((probe(x_test)["color"].argmax(-1) == y_test).float().mean())

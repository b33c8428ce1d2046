"""DeiT's training augmentation with timm's semantics: RandAugment, random erasing, Mixup/CutMix, repeated
augmentation. Each follows timm 1.0's algorithm (``timm/data/auto_augment.py``, ``random_erasing.py``,
``mixup.py``, ``distributed_sampler.py``) so that a timm recipe means the same here.

Why not MindSpore's own ops for these: ``vision.RandAugment`` is torchvision's (14 ops at a fixed magnitude on a
31-bin scale, no magnitude noise, no "increasing" op set, always applied), not timm's ``rand-m9-mstd0.5-inc1``
(15 ops, each applied with probability 0.5, magnitude drawn from N(9, 0.5) on timm's 0-10 scale, half of the ops
signed at random); ``MixUpBatch``/``CutMixBatch`` mix with a random permutation and one-hot labels, each on its
own, without timm's per-batch switch between the two, its lambda correction for clipped boxes or label smoothing
folded into the soft targets; ``vision.RandomErasing`` is torchvision's (box sampling like timm's, but the whole
call skipped or not by its own probability rule and no per-channel "rand" mode): timm's algorithm is kept here, on
the normalised CHW array, and tested against its definition.
These run in the dataset pipeline's worker threads (``benchmarks/bench_pipeline.py`` measures them against timm's
loader).
"""
import math
import random
import re
from typing import Optional, Sequence, Tuple

import mindspore.dataset as ds
import numpy as np
from PIL import Image, ImageEnhance, ImageOps

_LEVEL_DENOM = 10.0                 # timm's magnitude scale: M0..M10


# ---- RandAugment (timm's "rand-m9-mstd0.5-inc1") -------------------------------------------------------------

def _negate_half(value: float) -> float:
    return -value if random.random() > 0.5 else value


def _affine(img: Image.Image, matrix, fill, resample) -> Image.Image:
    return img.transform(img.size, Image.AFFINE, matrix, fillcolor=fill, resample=resample)


def _posterize(img: Image.Image, bits: int) -> Image.Image:
    """Keep the top ``bits`` bits of each channel; 0 bits gives black, as Pillow did when timm wrote its ops
    (Pillow 12 refuses 0, which timm's PosterizeIncreasing asks for at magnitude 10)."""
    mask = (0xFF << (8 - bits)) & 0xFF
    return img.point([i & mask for i in range(256)] * len(img.getbands()))


def _solarize_add(img: Image.Image, add: int, thresh: int = 128) -> Image.Image:
    lut = [min(255, i + add) if i < thresh else i for i in range(256)]
    return img.point(lut * len(img.getbands()))


# name -> (level -> op arguments, op(img, *args, fill, resample)); the "Increasing" variants of timm's inc1 set,
# whose strength grows with the magnitude for every op.
RAND_INCREASING_OPS = {
    "AutoContrast": (lambda m, h: (), lambda img, f, r: ImageOps.autocontrast(img)),
    "Equalize": (lambda m, h: (), lambda img, f, r: ImageOps.equalize(img)),
    "Invert": (lambda m, h: (), lambda img, f, r: ImageOps.invert(img)),
    "Rotate": (lambda m, h: (_negate_half(m / _LEVEL_DENOM * 30.0),),
               lambda img, deg, f, r: img.rotate(deg, resample=r, fillcolor=f)),
    "PosterizeIncreasing": (lambda m, h: (4 - int(m / _LEVEL_DENOM * 4),),
                            lambda img, bits, f, r: img if bits >= 8 else _posterize(img, bits)),
    "SolarizeIncreasing": (lambda m, h: (256 - min(256, int(m / _LEVEL_DENOM * 256)),),
                           lambda img, thresh, f, r: ImageOps.solarize(img, thresh)),
    "SolarizeAdd": (lambda m, h: (min(128, int(m / _LEVEL_DENOM * 110)),),
                    lambda img, add, f, r: _solarize_add(img, add)),
    "ColorIncreasing": (lambda m, h: (max(0.1, 1.0 + _negate_half(m / _LEVEL_DENOM * 0.9)),),
                        lambda img, k, f, r: ImageEnhance.Color(img).enhance(k)),
    "ContrastIncreasing": (lambda m, h: (max(0.1, 1.0 + _negate_half(m / _LEVEL_DENOM * 0.9)),),
                           lambda img, k, f, r: ImageEnhance.Contrast(img).enhance(k)),
    "BrightnessIncreasing": (lambda m, h: (max(0.1, 1.0 + _negate_half(m / _LEVEL_DENOM * 0.9)),),
                             lambda img, k, f, r: ImageEnhance.Brightness(img).enhance(k)),
    "SharpnessIncreasing": (lambda m, h: (max(0.1, 1.0 + _negate_half(m / _LEVEL_DENOM * 0.9)),),
                            lambda img, k, f, r: ImageEnhance.Sharpness(img).enhance(k)),
    "ShearX": (lambda m, h: (_negate_half(m / _LEVEL_DENOM * 0.3),),
               lambda img, k, f, r: _affine(img, (1, k, 0, 0, 1, 0), f, r)),
    "ShearY": (lambda m, h: (_negate_half(m / _LEVEL_DENOM * 0.3),),
               lambda img, k, f, r: _affine(img, (1, 0, 0, k, 1, 0), f, r)),
    "TranslateXRel": (lambda m, h: (_negate_half(m / _LEVEL_DENOM * h["translate_pct"]),),
                      lambda img, pct, f, r: _affine(img, (1, 0, pct * img.size[0], 0, 1, 0), f, r)),
    "TranslateYRel": (lambda m, h: (_negate_half(m / _LEVEL_DENOM * h["translate_pct"]),),
                      lambda img, pct, f, r: _affine(img, (1, 0, 0, 0, 1, pct * img.size[1]), f, r)),
}


class RandAugment:
    """timm's RandAugment on HWC uint8 arrays: ``num_ops`` ops drawn with replacement from the 15 "increasing"
    ops; each is applied with probability ``prob`` at a magnitude drawn from N(magnitude, magnitude_std) clipped
    to [0, 10].

    Args:
        magnitude, magnitude_std, num_ops: the ``m``, ``mstd`` and ``n`` of ``rand-m9-mstd0.5-inc1``.
        fill: RGB fill of the geometric ops (timm: the dataset mean in 0-255).
        interpolation: PIL resampling of the geometric ops (timm: the model's, bicubic for ViT).
        prob: probability of each chosen op (timm: 0.5).
    """

    def __init__(self, magnitude: float = 9, magnitude_std: float = 0.5, num_ops: int = 2,
                 fill: Tuple[int, int, int] = (124, 116, 104), interpolation=Image.BICUBIC, prob: float = 0.5):
        self.magnitude, self.magnitude_std, self.num_ops, self.prob = magnitude, magnitude_std, num_ops, prob
        self.fill, self.interpolation = tuple(fill), interpolation
        self.hparams = {"translate_pct": 0.45}
        self.names = list(RAND_INCREASING_OPS)

    @classmethod
    def from_string(cls, spec: str, **kwargs) -> "RandAugment":
        """``rand-m9-mstd0.5-inc1`` (timm's syntax; ``n`` ops, ``m`` magnitude, ``mstd`` noise; only the ``inc1``
        op set is implemented)."""
        parts = spec.split("-")
        if parts[0] != "rand":
            raise ValueError(f"auto augment {spec!r}: only timm's RandAugment ('rand-m9-mstd0.5-inc1') is supported")
        values = {}
        for part in parts[1:]:
            match = re.match(r"([a-z]+)([\d.]+)$", part)
            key, value = match.groups() if match else (part, "")
            values[key] = value
        if values.get("inc", "1") != "1":
            raise ValueError(f"auto augment {spec!r}: only the increasing op set (inc1) is implemented")
        unknown = set(values) - {"m", "mstd", "n", "inc", "p"}
        if unknown:
            raise ValueError(f"auto augment {spec!r}: unknown part(s) {', '.join(sorted(unknown))}")
        return cls(magnitude=float(values.get("m", 9)), magnitude_std=float(values.get("mstd", 0.5)),
                   num_ops=int(values.get("n", 2)), prob=float(values.get("p", 0.5)), **kwargs)

    def apply_op(self, img: Image.Image, name: str, magnitude: float) -> Image.Image:
        level_fn, op = RAND_INCREASING_OPS[name]
        return op(img, *level_fn(magnitude, self.hparams), self.fill, self.interpolation)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        img = Image.fromarray(image)
        for name in np.random.choice(self.names, self.num_ops, replace=True):
            if self.prob < 1.0 and random.random() > self.prob:
                continue
            magnitude = random.gauss(self.magnitude, self.magnitude_std) if self.magnitude_std > 0 else self.magnitude
            img = self.apply_op(img, name, max(0.0, min(magnitude, _LEVEL_DENOM)))
        return np.asarray(img)


# ---- Random erasing (timm's, on the normalised CHW image) ----------------------------------------------------

class RandomErasing:
    """timm's RandomErasing for one normalised CHW float32 image: with probability ``probability``, up to 10
    attempts at a box of area U(min_area, max_area) x image area and aspect ratio log-uniform in
    [min_aspect, 1 / min_aspect]; the first that fits is filled with per-pixel N(0, 1) noise (``mode="pixel"``),
    a per-channel N(0, 1) colour (``"rand"``) or zeros (``"const"``)."""

    def __init__(self, probability: float = 0.25, mode: str = "pixel", min_area: float = 0.02,
                 max_area: float = 1 / 3, min_aspect: float = 0.3):
        if mode not in ("pixel", "rand", "const"):
            raise ValueError(f"random erasing mode must be pixel, rand or const, not {mode!r}")
        self.probability, self.mode, self.min_area, self.max_area = probability, mode, min_area, max_area
        self.log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))

    def box(self, height: int, width: int) -> Optional[Tuple[int, int, int, int]]:
        """(top, left, h, w) of the box to erase, or None (no erasing this time)."""
        if random.random() > self.probability:
            return None
        area = height * width
        for _ in range(10):
            target = random.uniform(self.min_area, self.max_area) * area
            aspect = math.exp(random.uniform(*self.log_aspect))
            h, w = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            if w < width and h < height:
                return random.randint(0, height - h), random.randint(0, width - w), h, w
        return None

    def __call__(self, image: np.ndarray) -> np.ndarray:
        channels, height, width = image.shape
        box = self.box(height, width)
        if box is None:
            return image
        top, left, h, w = box
        image = image.copy()
        if self.mode == "pixel":
            fill = np.random.standard_normal((channels, h, w))
        elif self.mode == "rand":
            fill = np.random.standard_normal((channels, 1, 1))
        else:
            fill = np.zeros((channels, 1, 1))
        image[:, top:top + h, left:left + w] = fill.astype(image.dtype)
        return image


# ---- Mixup / CutMix (timm's, per batch) ----------------------------------------------------------------------

def soft_targets(labels: np.ndarray, num_classes: int, lam: float, smoothing: float) -> np.ndarray:
    """timm's ``mixup_target``: smoothed one-hot labels mixed with those of the reversed batch, (B, K) float32."""
    off = smoothing / num_classes
    y1 = np.full((len(labels), num_classes), off, np.float32)
    y1[np.arange(len(labels)), labels] = 1.0 - smoothing + off
    return (y1 * lam + y1[::-1] * (1.0 - lam)).astype(np.float32)


def cutmix_box(height: int, width: int, lam: float) -> Tuple[Tuple[int, int, int, int], float]:
    """timm's ``rand_bbox`` + lambda correction: a box of side ratio sqrt(1 - lam) centred at a uniform point,
    clipped to the image; returns ((y0, y1, x0, x1), the corrected lambda = 1 - box area / image area)."""
    ratio = np.sqrt(1 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = np.random.randint(0, height), np.random.randint(0, width)
    y0, y1 = np.clip(cy - cut_h // 2, 0, height), np.clip(cy + (cut_h + 1) // 2, 0, height)
    x0, x1 = np.clip(cx - cut_w // 2, 0, width), np.clip(cx + (cut_w + 1) // 2, 0, width)
    return (int(y0), int(y1), int(x0), int(x1)), 1.0 - (y1 - y0) * (x1 - x0) / float(height * width)


class Mixup:
    """timm's Mixup/CutMix in "batch" mode on a batch (images (B, C, H, W) float32, labels (B,) int):
    with probability ``prob`` the batch is mixed with its reverse, by CutMix (probability ``switch_prob`` when
    both alphas are on) or Mixup, lambda ~ Beta(alpha, alpha); labels become soft targets (B, K) with
    ``label_smoothing`` folded in (also for unmixed batches)."""

    def __init__(self, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0, prob: float = 1.0,
                 switch_prob: float = 0.5, label_smoothing: float = 0.1, num_classes: int = 1000):
        if mixup_alpha <= 0 and cutmix_alpha <= 0:
            raise ValueError("Mixup needs mixup_alpha > 0 or cutmix_alpha > 0")
        self.mixup_alpha, self.cutmix_alpha, self.prob, self.switch_prob = mixup_alpha, cutmix_alpha, prob, switch_prob
        self.label_smoothing, self.num_classes = label_smoothing, num_classes

    def params(self) -> Tuple[float, bool]:
        """(lambda, use_cutmix) for the next batch, drawn as timm's ``_params_per_batch``."""
        if np.random.rand() >= self.prob:
            return 1.0, False
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            use_cutmix = np.random.rand() < self.switch_prob
            alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        else:
            use_cutmix = self.cutmix_alpha > 0
            alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        return float(np.random.beta(alpha, alpha)), use_cutmix

    def mix(self, images: np.ndarray, labels: np.ndarray, lam: float, use_cutmix: bool):
        """Apply given parameters (what ``__call__`` draws): returns (mixed images, soft targets)."""
        if lam != 1.0:
            if use_cutmix:
                (y0, y1, x0, x1), lam = cutmix_box(images.shape[-2], images.shape[-1], lam)
                images = images.copy()
                images[:, :, y0:y1, x0:x1] = images[::-1, :, y0:y1, x0:x1]
            else:
                images = (images * lam + images[::-1] * (1.0 - lam)).astype(images.dtype)
        return images, soft_targets(labels.astype(np.int64), self.num_classes, lam, self.label_smoothing)

    def __call__(self, images: np.ndarray, labels: np.ndarray):
        if len(images) % 2:
            raise ValueError("Mixup/CutMix needs an even batch size")
        return self.mix(images, labels, *self.params())


# ---- Repeated augmentation (timm's RepeatAugSampler, DeiT's RASampler) ---------------------------------------

class RepeatedAugmentSampler(ds.Sampler):
    """Each epoch: a permutation of the dataset (seeded by ``seed + epoch``, the same on every rank), every index
    repeated ``repeats`` times in a row, dealt round-robin to the ranks; each rank keeps
    ``floor(N // 256 * 256 / ranks)`` of them, so an epoch has as many steps as without repetition (timm's
    ``selected_round=256``). The same image then appears on ``repeats`` ranks, each with its own augmentation."""

    def __init__(self, num_samples: int, num_shards: int = 1, shard_id: int = 0, repeats: int = 3, seed: int = 0):
        self.total, self.num_shards, self.shard_id, self.repeats, self.seed = num_samples, num_shards, shard_id, \
            repeats, seed
        self.per_rank = int(math.floor(num_samples // 256 * 256 / num_shards)) if num_samples >= 256 else \
            int(math.ceil(num_samples / num_shards))
        self.padded = int(math.ceil(num_samples * repeats / num_shards)) * num_shards
        self.epoch = 0
        super().__init__()

    def indices(self, epoch: int) -> Sequence[int]:
        order = np.random.default_rng(self.seed + epoch).permutation(self.total)
        repeated = np.repeat(order, self.repeats)
        repeated = np.concatenate([repeated, repeated[:self.padded - len(repeated)]])
        return repeated[self.shard_id:self.padded:self.num_shards][:self.per_rank].tolist()

    def __iter__(self):
        indices = self.indices(self.epoch)
        self.epoch += 1
        return iter(indices)

    def __len__(self):
        return self.per_rank

"""ms_vit.data.augment against timm's definitions: RandAugment, random erasing, Mixup/CutMix, repeated augmentation."""
import math
import random

import numpy as np
import pytest
from bounds import U, assert_within
from PIL import Image, ImageEnhance, ImageOps

from ms_vit.data import augment
from ms_vit.data.augment import Mixup, RandAugment, RandomErasing, RepeatedAugmentSampler, cutmix_box, soft_targets

# timm 1.0's _RAND_INCREASING_TRANSFORMS, in its order
TIMM_INC1 = ["AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing",
             "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing",
             "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"]


def photo(seed=0, size=48):
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def test_rand_augment_spec_is_deits():
    ra = RandAugment.from_string("rand-m9-mstd0.5-inc1", fill=(124, 116, 104))
    assert (ra.magnitude, ra.magnitude_std, ra.num_ops, ra.prob) == (9.0, 0.5, 2, 0.5)
    assert ra.names == TIMM_INC1
    with pytest.raises(ValueError, match="increasing op set"):
        RandAugment.from_string("rand-m9-inc0")
    with pytest.raises(ValueError, match="only timm's RandAugment"):
        RandAugment.from_string("v0")


@pytest.mark.parametrize("magnitude", [0.0, 4.5, 9.0, 10.0])
def test_rand_augment_ops_at_a_magnitude_are_timms(magnitude):
    """Each op's argument at magnitude m, as timm's level functions compute it (sign fixed by seeding)."""
    ra = RandAugment(fill=(1, 2, 3), interpolation=Image.BICUBIC)
    img = Image.fromarray(photo())
    level = magnitude / 10.0
    for sign_draw in (0.2, 0.8):                              # random() > 0.5 negates in timm
        random.seed(0)
        while True:                                            # find a seed whose first draw is on this side
            state = random.getstate()
            if (random.random() > 0.5) == (sign_draw > 0.5):
                break
        sign = -1 if sign_draw > 0.5 else 1
        expected = {
            "Rotate": img.rotate(sign * level * 30, resample=Image.BICUBIC, fillcolor=(1, 2, 3)),
            "ShearX": img.transform(img.size, Image.AFFINE, (1, sign * level * 0.3, 0, 0, 1, 0),
                                    fillcolor=(1, 2, 3), resample=Image.BICUBIC),
            "TranslateYRel": img.transform(img.size, Image.AFFINE, (1, 0, 0, 0, 1, sign * level * 0.45 * 48),
                                           fillcolor=(1, 2, 3), resample=Image.BICUBIC),
            "ColorIncreasing": ImageEnhance.Color(img).enhance(max(0.1, 1 + sign * level * 0.9)),
            "SharpnessIncreasing": ImageEnhance.Sharpness(img).enhance(max(0.1, 1 + sign * level * 0.9)),
        }
        for name, want in expected.items():
            random.setstate(state)
            got = ra.apply_op(img, name, magnitude)
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=f"{name} m={magnitude}")
    bits = 4 - int(level * 4)                  # 0 at magnitude 10: black (Pillow < 12's posterize)
    posterized = np.asarray(ImageOps.posterize(img, bits)) if bits else np.zeros_like(np.asarray(img))
    np.testing.assert_array_equal(np.asarray(ra.apply_op(img, "PosterizeIncreasing", magnitude)), posterized)
    np.testing.assert_array_equal(np.asarray(ra.apply_op(img, "SolarizeIncreasing", magnitude)),
                                  np.asarray(ImageOps.solarize(img, 256 - min(256, int(level * 256)))))
    add = min(128, int(level * 110))
    arr = np.asarray(img).astype(int)
    np.testing.assert_array_equal(np.asarray(ra.apply_op(img, "SolarizeAdd", magnitude)),
                                  np.where(arr < 128, np.minimum(255, arr + add), arr))


def test_rand_augment_applies_each_op_with_probability_half():
    """2 ops, each applied with probability 0.5 (Invert-only set: every applied op changes the image, two cancel)."""
    random.seed(1)
    np.random.seed(1)
    ra = RandAugment(num_ops=2, magnitude=9)
    ra.names = ["Invert"]
    image = photo()
    inverted = sum(not np.array_equal(ra(image), image) for _ in range(4000)) / 4000
    assert abs(inverted - 0.5) < 0.03     # odd number of inversions: 2 x 0.5 x 0.5; seeded, sd 0.008 of 4000 draws
    # the magnitude is drawn from N(9, 0.5), clipped to [0, 10]
    seen = []
    ra = RandAugment(num_ops=1, magnitude=9, magnitude_std=0.5, prob=1.0)
    ra.apply_op = lambda img, name, m: (seen.append(m), img)[1]
    for _ in range(4000):
        ra(image)
    # seeded; sd of the mean of 4000 draws 0.008, of their std 0.006 (clipping at 10 lowers it by < 0.01)
    assert abs(np.mean(seen) - 9.0) < 0.05 and abs(np.std(seen) - 0.5) < 0.03 and max(seen) <= 10.0


def test_random_erasing_box_and_fill():
    random.seed(0)
    np.random.seed(0)
    erase = RandomErasing(probability=0.25, mode="pixel")
    image = np.full((3, 64, 64), 7.0, np.float32)
    erased = [erase(image) for _ in range(3000)]
    changed = [e for e in erased if not np.array_equal(e, image)]
    assert abs(len(changed) / 3000 - 0.25) < 0.03                      # seeded; sd 0.008 of 3000 draws
    areas, aspects, noise = [], [], []
    for e in changed:
        rows, cols = np.nonzero((e != 7.0).any(axis=0))
        h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        areas.append(h * w / 64 ** 2)
        aspects.append(h / w)
        noise.append(e[:, e[0] != 7.0].ravel())
    assert min(areas) >= 0.015 and max(areas) <= 1 / 3 + 0.02           # U(0.02, 1/3) of the area, rounded
    assert min(aspects) >= 0.25 and max(aspects) <= 1 / 0.25             # log-uniform in [0.3, 1/0.3], rounded
    noise = np.concatenate(noise)
    assert abs(noise.mean()) < 0.02 and abs(noise.std() - 1.0) < 0.02   # per-pixel N(0, 1); > 10^5 draws: sd 0.003
    const = RandomErasing(probability=1.0, mode="const")(image)
    assert set(np.unique(const)) == {0.0, 7.0}


def test_soft_targets_fold_label_smoothing():
    labels = np.array([0, 2, 1, 3])
    t = soft_targets(labels, 4, lam=0.7, smoothing=0.1)
    y = np.full((4, 4), 0.1 / 4)
    y[np.arange(4), labels] = 1 - 0.1 + 0.1 / 4
    # float32: the smoothed entries rounded, two products and a sum (4 U of each value); float64 reference
    assert_within(t, 0.7 * y + 0.3 * y[::-1], 4 * U * (0.7 * y + 0.3 * y[::-1]), "soft targets")
    assert_within(t.sum(1), 1.0, 8 * U, "their sums")                   # 4 U each, and a float32 sum of 4


def test_mixup_and_cutmix_for_given_lambda_and_box():
    rng = np.random.default_rng(0)
    images = rng.standard_normal((4, 3, 8, 8)).astype(np.float32)
    labels = np.array([1, 0, 2, 1])
    mix = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=3)
    mixed, targets = mix.mix(images, labels, 0.7, use_cutmix=False)
    expected = 0.7 * images.astype(np.float64) + 0.3 * images[::-1]       # float32: 1 - lam, 2 products, a sum
    assert_within(mixed, expected, 4 * U * (0.7 * np.abs(images) + 0.3 * np.abs(images[::-1])), "mixup")
    np.testing.assert_allclose(targets, soft_targets(labels, 3, 0.7, 0.1))      # the same function: identical
    np.random.seed(3)
    box, corrected = cutmix_box(8, 8, 0.7)
    np.random.seed(3)
    cut, targets = mix.mix(images, labels, 0.7, use_cutmix=True)
    y0, y1, x0, x1 = box
    inside = np.zeros((8, 8), bool)
    inside[y0:y1, x0:x1] = True
    np.testing.assert_array_equal(cut[:, :, inside], images[::-1][:, :, inside])
    np.testing.assert_array_equal(cut[:, :, ~inside], images[:, :, ~inside])
    assert corrected == pytest.approx(1 - inside.sum() / 64)         # float64, exact: an integer over 64
    np.testing.assert_allclose(targets, soft_targets(labels, 3, corrected, 0.1))
    # the box: side sqrt(1 - lam) of the image's, centred at a uniform point, clipped
    ratio = math.sqrt(1 - 0.7)
    assert (y1 - y0) <= int(8 * ratio) + 1 and (x1 - x0) <= int(8 * ratio) + 1


def test_mixup_draws_as_timm():
    """prob 1: every batch mixed; switch 0.5: half CutMix; lambda ~ Beta(alpha, alpha) of the chosen method."""
    np.random.seed(0)
    mix = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5)
    draws = [mix.params() for _ in range(6000)]
    cut = [lam for lam, c in draws if c]
    mixed = [lam for lam, c in draws if not c]
    # seeded; sd of the fraction 0.006, of each variance ~0.001 (3000 draws)
    assert abs(len(cut) / 6000 - 0.5) < 0.03
    assert abs(np.var(cut) - 1 / 12) < 0.01                         # Beta(1, 1) = U(0, 1)
    assert abs(np.var(mixed) - 0.25 / 2.6) < 0.01                   # Beta(.8, .8): 1 / (4 (2a + 1))
    assert Mixup(prob=0.0).params() == (1.0, False)


def test_repeated_augmentation_sampler():
    """timm's RepeatAugSampler: each image 3 times per epoch over the ranks, the same epoch order on every rank."""
    samplers = [RepeatedAugmentSampler(12, num_shards=2, shard_id=r, repeats=3, seed=5) for r in range(2)]
    first = [s.indices(0) for s in samplers]
    assert [len(f) for f in first] == [6, 6]
    order = np.random.default_rng(5).permutation(12)
    dealt = np.repeat(order, 3)
    assert first[0] == dealt[0::2][:6].tolist() and first[1] == dealt[1::2][:6].tolist()
    assert samplers[0].indices(1) != first[0]                            # a new order each epoch
    big = RepeatedAugmentSampler(1000, num_shards=4, shard_id=0, repeats=3)
    assert len(big.indices(0)) == 1000 // 256 * 256 // 4                 # timm's selected_round=256
    assert len(list(iter(samplers[0]))) == 6 and samplers[0].epoch == 1


def test_augment_module_has_no_torch():
    assert "torch" not in augment.__dict__

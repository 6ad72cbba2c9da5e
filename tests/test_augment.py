"""kernelkit.augment: per-sample Philox lanes (independence, reproducibility), RandomResizedCrop
semantics, and params(i)."""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest

import kernelkit

augment_mod = importlib.import_module("kernelkit.augment")  # (kernelkit.augment is the function)

N = 4000
SIZES = [(480, 640)] * N


def _lag1_correlations(aug) -> dict[str, float]:
    """Correlation of sample i's draws with sample i + 1's, for every pair of fields."""
    area = np.array([h * w / (480 * 640) for _, _, h, w in aug.crop])
    aspect = np.array([math.log(w / h) for _, _, h, w in aug.crop])
    top = np.array([t for t, _, _, _ in aug.crop], float)
    flip = np.array([f[0] for f in aug.flip], float)
    rot = np.array(aug.rotate)
    fields = {"area": area, "aspect": aspect, "top": top, "flip": flip, "rotate": rot}
    return {f"{a}[i]~{b}[i+1]": float(np.corrcoef(x[:-1], y[1:])[0, 1])
            for a, x in fields.items() for b, y in fields.items()}


def test_consecutive_samples_draw_independently():
    aug = kernelkit.augment(range(N), SIZES, seed=3, epoch=1, degrees=30)
    corr = _lag1_correlations(aug)
    # 4000 independent pairs: the correlation's standard error is 1/sqrt(4000) = 0.016
    worst = max(corr, key=lambda k: abs(corr[k]))
    assert abs(corr[worst]) < 0.05, (worst, corr[worst])
    # and across epochs: the same index in epochs e and e + 1
    nxt = kernelkit.augment(range(N), SIZES, seed=3, epoch=2, degrees=30)
    a0 = [h * w for _, _, h, w in aug.crop]
    a1 = [h * w for _, _, h, w in nxt.crop]
    assert abs(np.corrcoef(a0, a1)[0, 1]) < 0.05


def test_the_independence_check_catches_overlapping_lanes(monkeypatch):
    """The old layout (counter [index, epoch, 0, 0]) shares draws between neighbours: the same
    statistic must flag it, or the test above proves nothing."""
    def overlapping(seed, epoch, index):
        return np.random.Generator(np.random.Philox(key=seed, counter=[index, epoch, 0, 0]))

    monkeypatch.setattr(augment_mod, "sample_generator", overlapping)
    corr = _lag1_correlations(kernelkit.augment(range(N), SIZES, seed=3, epoch=1, degrees=30))
    assert max(abs(v) for v in corr.values()) > 0.5


@pytest.mark.parametrize("batch", [1, 7, 32, 1000])
def test_draws_do_not_depend_on_batch_order_or_resume_point(batch):
    sizes = [(480, 640), (500, 375), (100, 900), (64, 64), (33, 700)] * 40
    kw = dict(seed=11, epoch=3, degrees=15, vflip=0.2)
    full = kernelkit.augment(range(200), sizes, **kw)
    parts = [kernelkit.augment(range(a, min(a + batch, 200)), sizes[a:a + batch], **kw)
             for a in range(0, 200, batch)]
    assert sum((p.crop for p in parts), []) == full.crop
    assert sum((p.flip for p in parts), []) == full.flip
    assert sum((p.rotate for p in parts), []) == full.rotate
    perm = np.random.default_rng(batch).permutation(200).tolist()  # a shuffled sampler
    shuffled = kernelkit.augment(perm, [sizes[i] for i in perm], **kw)
    for i in perm:
        assert shuffled.params(i) == full.params(i)
    resumed = kernelkit.augment(range(150, 200), sizes[150:], **kw)  # resume mid-epoch
    assert resumed.crop == full.crop[150:]


def test_params_shows_one_samples_draw():
    aug = kernelkit.augment([5, 9], [(100, 200), (300, 300)], seed=1, epoch=2, degrees=10)
    p = aug.params(9)
    assert p == {"index": 9, "seed": 1, "epoch": 2, "crop": aug.crop[1], "flip": aug.flip[1],
                 "rotate": aug.rotate[1]}
    alone = kernelkit.augment([9], [(300, 300)], seed=1, epoch=2, degrees=10)
    assert alone.params(9) == p
    with pytest.raises(KeyError, match="sample index 4 was not drawn"):
        aug.params(4)


def test_random_resized_crop_follows_torchvision():
    """Area fraction in `scale`, aspect ratio in `ratio` (up to rounding of the box), uniform
    position; the central crop at the nearest allowed ratio when 10 tries fail."""
    scale, ratio = (0.2, 0.6), (0.5, 2.0)
    H, W = 400, 600
    aug = kernelkit.augment(range(3000), [(H, W)] * 3000, seed=0, scale=scale, ratio=ratio)
    frac = np.array([h * w / (H * W) for _, _, h, w in aug.crop])
    asp = np.array([w / h for _, _, h, w in aug.crop])
    assert frac.min() >= scale[0] * 0.97 and frac.max() <= scale[1] * 1.03
    assert asp.min() >= ratio[0] * 0.98 and asp.max() <= ratio[1] * 1.02
    # where every box fits at the first try, log(aspect) is uniform over log(ratio)
    sq = kernelkit.augment(range(3000), [(1000, 1000)] * 3000, seed=1, scale=(0.05, 0.1),
                           ratio=ratio)
    log_asp = np.log([w / h for _, _, h, w in sq.crop])
    quartiles = np.quantile(log_asp, [0.25, 0.5, 0.75])
    assert np.allclose(quartiles, np.log(2) * np.array([-0.5, 0.0, 0.5]), atol=0.05)
    # a tall thin image: no box of area >= 90% fits a 3/4..4/3 ratio, so every try fails
    thin = kernelkit.augment(range(20), [(1000, 10)] * 20, seed=0, scale=(0.9, 1.0))
    for top, left, h, w in thin.crop:
        assert (w, h) == (10, round(10 / (3 / 4))) and left == 0 and top == (1000 - h) // 2
    # fallback inside the ratio range: the whole image
    whole = kernelkit.augment([0], [(10, 11)], seed=0, scale=(1.0, 1.0), ratio=(0.5, 0.51))
    # in_ratio 1.1 > 0.51: full height, width = round(10 * 0.51)
    assert whole.crop[0] == (0, (11 - 5) // 2, 10, 5)


def test_flip_probability_and_bad_keys():
    aug = kernelkit.augment(range(N), SIZES, seed=9, hflip=0.3)
    assert abs(np.mean([f[0] for f in aug.flip]) - 0.3) < 0.03  # 4.4 standard errors
    for kw, msg in ((dict(seed=-1), "'seed'"), (dict(seed=0, epoch=2**64), "'epoch'"),
                    (dict(seed=True), "'seed'")):
        with pytest.raises(ValueError, match=msg):
            kernelkit.augment([0], [(10, 10)], **kw)
    with pytest.raises(ValueError, match="'index'"):
        kernelkit.augment([-1], [(10, 10)], seed=0)


def test_a_range_of_one_angle_rotates_by_it_as_torchvision():
    # degrees=(30, 30) drew no rotation at all (torchvision's RandomRotation((30, 30)): 30)
    for degrees in ((30, 30), (-90.0, -90.0), (0, 0)):
        aug = kernelkit.augment([0, 1, 2], [(32, 32)] * 3, seed=0, degrees=degrees)
        assert aug.rotate == [float(degrees[0])] * 3


def test_bad_ranges_probabilities_and_sizes_name_the_argument():
    # these raised IndexError, ZeroDivisionError and "cannot unpack non-iterable numpy.int64",
    # or were taken silently (hflip=2; degrees dropped under quarter_turns)
    for kw, msg in ((dict(scale=(0.5,)), "'scale' must be a \\(low, high\\) pair"),
                    (dict(ratio="wide"), "'ratio' must be a \\(low, high\\) pair"),
                    (dict(hflip=2), "'hflip' is a probability in \\[0, 1\\], got 2"),
                    (dict(vflip=-0.1), "'vflip' is a probability"),
                    (dict(degrees=10, quarter_turns=True), "give one of them"),
                    (dict(degrees=(30, 30), quarter_turns=True), "give one of them"),
                    # these two drew no rotation at all, silently
                    (dict(degrees=-10), "'degrees' as one number d means \\(-d, d\\) and must "
                                        "be >= 0"),
                    (dict(degrees=(10, -10)), "low <= high, got \\(10, -10\\)"),
                    (dict(degrees=float("nan")), "must be >= 0 and finite")):
        with pytest.raises(ValueError, match=msg):
            kernelkit.augment([0], [(10, 10)], seed=0, **kw)
    with pytest.raises(ValueError, match="at least 1x1, got 0x5"):
        kernelkit.augment([0], [(0, 5)], seed=0)
    # a numpy integer is a number of degrees like any other
    a = kernelkit.augment([0, 1], [(10, 10)] * 2, seed=3, degrees=np.int64(10))
    b = kernelkit.augment([0, 1], [(10, 10)] * 2, seed=3, degrees=10)
    assert a.rotate == b.rotate and all(-10 <= r <= 10 for r in a.rotate)


def test_indices_and_epochs_past_2_63_draw_their_own_parameters():
    # the counter [0, 0, index, epoch] went to numpy as a list: with a lane of 2**63 or more it
    # became float64, so 2**63 and 2**63 + 1 (and 0 and 2**64 - 1) drew the same parameters
    def draw(index, epoch=0):
        return kernelkit.augment([index], [(480, 640)], seed=0, epoch=epoch).crop[0]

    for i, j in ((0, 2**64 - 1), (2**63, 2**63 + 1), (2**63 - 1, 2**63)):
        assert draw(i) != draw(j), (i, j)
    assert draw(5) != draw(5, epoch=2**64 - 1)
    assert draw(2**63 + 1) == draw(2**63 + 1)  # (still a key: same draw)
    # an index below 2**63 keeps the draw it had (the same counter as a list of small ints)
    rng = np.random.Generator(np.random.Philox(key=0, counter=[0, 0, 12345, 6]))
    assert np.array_equal(augment_mod.sample_generator(0, 6, 12345).random(4), rng.random(4))


def test_ratio_and_image_size_mistakes_name_the_argument():
    # ratio=(1, inf) raised numpy's "high - low range exceeds valid bounds"; an image's whole
    # shape (h, w, c) "too many values to unpack"; a float height was silently truncated
    with pytest.raises(ValueError, match="'ratio' must satisfy 0 < low <= high < inf"):
        kernelkit.augment([0], [(480, 640)], seed=0, ratio=(1, float("inf")))
    for size in ((480, 640, 3), (10.7, 10), 480, (480,)):
        with pytest.raises(ValueError, match=r"image_sizes\[1\] must be a \(height, width\) pair"):
            kernelkit.augment([0, 1], [(480, 640), size], seed=0)
    # numpy integers (an image's shape[:2]) are sizes like any other
    a = kernelkit.augment([0], [np.zeros((48, 64, 3)).shape[:2]], seed=0)
    assert a.crop == kernelkit.augment([0], [(48, 64)], seed=0).crop


def test_an_integer_tensor_is_an_index_like_any_integer():
    # a torch Sampler's index tensor raised "'index' must be an int"
    torch = pytest.importorskip("torch")
    a = kernelkit.augment(torch.tensor([3, 7]), [(48, 64)] * 2, seed=torch.tensor(1))
    b = kernelkit.augment([3, 7], [(48, 64)] * 2, seed=1)
    assert a.crop == b.crop and a.params(7) == b.params(7)
    with pytest.raises(ValueError, match="'index'"):
        kernelkit.augment(torch.tensor([0.5]), [(48, 64)], seed=0)
    with pytest.raises(ValueError, match="'index'"):  # (as Python's and numpy's booleans)
        kernelkit.augment(torch.tensor([True]), [(48, 64)], seed=0)
    # a tensor's shape, or sizes as tensors, as before
    c = kernelkit.augment([3, 7], [torch.zeros(48, 64).shape, tuple(torch.tensor([48, 64]))],
                          seed=1)
    assert c.crop == b.crop

"""Generator for "waterdigits": a small, offline, Waterbirds-shaped benchmark.

Waterbirds needs a large download and a GPU to be useful; waterdigits keeps its
group structure (same four groups, same train/val/test group counts) but is
built from scikit-learn's bundled 8x8 handwritten digits, so it can be produced
anywhere in seconds and trained on a CPU.

The class is a digit family (curved 0,2,3,5,6,8,9 vs straight 1,4,7), the
spurious attribute is the background.  The background is made easier to learn
than the digit (a strong colour difference plus a texture), so ERM leans on it
and fails on the minority groups, while the digit stays clearly readable so the
core feature is still in ERM's embeddings (last-layer retraining recovers it).
Each split renders from its own disjoint pool of source digits, so val/test
measure generalisation to unseen handwriting, not to re-augmented copies.
"""

from collections.abc import Callable

import numpy as np

CLASS_NAMES = ("curved digit", "straight digit")
ATTR_NAMES = ("land", "water")

# Group counts (y=0,a=0), (y=0,a=1), (y=1,a=0), (y=1,a=1), as in Waterbirds.
GROUP_COUNTS = {
    "train": (3498, 184, 56, 1057),
    "val": (467, 466, 133, 133),
    "test": (2255, 2255, 642, 642),
}
# Fraction of the 1797 source digits reserved for each split's pool.
POOL_FRACTIONS = {"train": 0.5, "val": 0.2, "test": 0.3}
# y = 1 for the mostly-straight digits, y = 0 for the curved ones.  A shape split
# is learnable by a small CNN from local strokes; 0-4 vs 5-9 is not, in 10 epochs.
STRAIGHT_DIGITS = (1, 4, 7)

# Mean background colour (RGB, 0..1) per attribute, and its per-image jitter.
BG_COLOURS = np.array([[0.42, 0.36, 0.20], [0.16, 0.30, 0.52]])
BG_JITTER = 0.06
BG_TEXTURE = 0.08  # amplitude of the land blobs / water waves
STROKE_RAMP = (0.2, 0.6)  # source intensities mapped to no ink / full ink
INK = 0.95  # digit stroke brightness before per-image jitter
NOISE = 0.04  # std of per-pixel Gaussian noise


def _bilinear(img: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Sample images (n, h, w) at float pixel coords (n, H, W); zero outside."""
    n, h, w = img.shape
    padded = np.zeros((n, h + 2, w + 2), dtype=np.float32)
    padded[:, 1:-1, 1:-1] = img
    u, v = u + 1.0, v + 1.0  # coordinates in the padded frame
    u0, v0 = np.floor(u), np.floor(v)
    fu, fv = (u - u0).astype(np.float32), (v - v0).astype(np.float32)
    # Clip both corners independently so far-outside points land on the zero border.
    u0, v0 = u0.astype(np.int64), v0.astype(np.int64)
    u1, v1 = np.clip(u0 + 1, 0, w + 1), np.clip(v0 + 1, 0, h + 1)
    u0, v0 = np.clip(u0, 0, w + 1), np.clip(v0, 0, h + 1)
    idx = np.arange(n)[:, None, None]
    return ((1 - fv) * ((1 - fu) * padded[idx, v0, u0] + fu * padded[idx, v0, u1])
            + fv * ((1 - fu) * padded[idx, v1, u0] + fu * padded[idx, v1, u1]))


def _digit_masks(src: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Place each 8x8 source digit on a size x size canvas with a random
    rotation, scale and shift, so no two examples are pixel copies."""
    n = len(src)
    angle = np.deg2rad(rng.uniform(-15, 15, n))
    zoom = 0.7 * size / 8 * rng.uniform(0.85, 1.1, n)  # output px per source px
    shift = rng.uniform(-0.08, 0.08, (n, 2)) * size
    centre = np.arange(size, dtype=np.float32) + 0.5 - size / 2
    ox = centre[None, None, :] - shift[:, 0, None, None]
    oy = centre[None, :, None] - shift[:, 1, None, None]
    cos = (np.cos(angle) / zoom)[:, None, None]
    sin = (np.sin(angle) / zoom)[:, None, None]
    # Inverse map: output pixel -> source pixel index (source centre is 3.5).
    u = cos * ox + sin * oy + 3.5
    v = -sin * ox + cos * oy + 3.5
    # Upsampled 8x8 digits are blurry; a contrast ramp gives crisp strokes.
    return np.clip((_bilinear(src, u, v) - STROKE_RAMP[0]) / (STROKE_RAMP[1] - STROKE_RAMP[0]), 0.0, 1.0)


def _backgrounds(attr: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Land = olive/brown with coarse blobs; water = blue with horizontal waves.
    Colour and texture both give away the attribute at a glance."""
    colour = BG_COLOURS[attr] + rng.uniform(-BG_JITTER, BG_JITTER, (len(attr), 3))
    return textured(colour, attr == 1, size, rng)


def textured(colour: np.ndarray, waves: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Backgrounds (n, 3, size, size) of the given RGB colours (n, 3): horizontal waves where
    `waves` is true, coarse blobs elsewhere."""
    n = len(colour)
    coarse = rng.uniform(-1, 1, (n, 4, 4)).astype(np.float32)
    grid = (np.arange(size) + 0.5) * 4 / size - 0.5
    blobs = _bilinear(coarse, np.broadcast_to(grid[None, None, :], (n, size, size)),
                      np.broadcast_to(grid[None, :, None], (n, size, size)))
    rows = np.arange(size)[None, :, None] / size
    cols = np.arange(size)[None, None, :] / size
    period = rng.uniform(0.15, 0.25, (n, 1, 1))
    phase = rng.uniform(0, 2 * np.pi, (n, 2, 1, 1))
    wave = np.sin(2 * np.pi * (rows + 0.05 * np.sin(2 * np.pi * cols + phase[:, 1])) / period
                  + phase[:, 0])
    texture = np.where(np.asarray(waves)[:, None, None], wave, blobs)
    return colour[:, :, None, None] * (1 + BG_TEXTURE * texture[:, None])


def compose(src: np.ndarray, size: int, rng: np.random.Generator,
            background: Callable[[int], np.ndarray]) -> np.ndarray:
    """Light digit strokes of the source images `src` (n, 8, 8) over `background(n)`, plus
    noise, as uint8 (n, 3, size, size)."""
    n = len(src)
    alpha = _digit_masks(src, size, rng)[:, None]
    ink = INK * rng.uniform(0.85, 1.0, (n, 1, 1, 1))
    img = background(n) * (1 - alpha) + ink * alpha
    img = img + rng.normal(0, NOISE, img.shape)
    return np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)


def _render(src: np.ndarray, attr: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Composite light digit strokes over the attribute's background, add noise."""
    return compose(src, size, rng, lambda n: _backgrounds(attr, size, rng))


def _split(images: np.ndarray, labels: np.ndarray, pool: np.ndarray, counts: list[int], size: int,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw each group's examples from the split's own pool of source digits."""
    ys, attrs, srcs = [], [], []
    for g, count in enumerate(counts):
        y, a = divmod(g, 2)
        candidates = pool[labels[pool] == y]
        srcs.append(rng.choice(candidates, count))
        ys.append(np.full(count, y))
        attrs.append(np.full(count, a))
    order = rng.permutation(sum(counts))
    src = np.concatenate(srcs)[order]
    y = np.concatenate(ys)[order].astype(np.int64)
    a = np.concatenate(attrs)[order].astype(np.int64)
    return _render(images[src], a, size, rng), y, a


def source_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1797 digits as (images in [0, 1], shape (1797, 8, 8); digit 0-9)."""
    from sklearn.datasets import load_digits  # imported on use: sklearn takes a second to import

    digits = load_digits()
    return (digits.images / 16.0).astype(np.float32), digits.target.astype(np.int64)


def pools(seed: int, n_sources: int = 1797) -> dict[str, np.ndarray]:
    """The source digits (indices into `source_digits()`) each split of `generate(seed)` draws
    from: disjoint, 50 / 20 / 30 % of the digits."""
    pool_rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(4)[0])
    perm = pool_rng.permutation(n_sources)
    bounds = np.cumsum([round(POOL_FRACTIONS[s] * n_sources) for s in ("train", "val")])
    return dict(zip(("train", "val", "test"), np.split(perm, bounds)))


def generate(seed: int = 0, scale: float = 1.0, size: int = 28) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Return {"train": (x, y, a), "val": (x, y, a), "test": (x, y, a)};
    x uint8 of shape (N, 3, size, size), y int64 in {0,1} (class), a int64 in {0,1} (background attribute)."""
    images, digit = source_digits()
    labels = np.isin(digit, STRAIGHT_DIGITS).astype(np.int64)
    split_rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)[1:]]
    out = {}
    for (name, pool), rng in zip(pools(seed, len(images)).items(), split_rngs):
        counts = [max(1, round(c * scale)) for c in GROUP_COUNTS[name]]
        out[name] = _split(images, labels, pool, counts, size, rng)
    return out

"""Two augmented views of a batch (the paper's Table 1), on the batch tensor's device.

RandomResizedCrop(scale 0.7-1.0, ratio 0.75-1.33) back to the input size, horizontal flip
(p 0.5), rotation (+-15 degrees), affine (translate 0.1 of the size, scale 0.9-1.1),
perspective (distortion 0.2). Parameters are drawn per example from a `torch.Generator`
(the global RNG is never read or reseeded) and applied with `torchvision.transforms.v2.functional`,
so every example gets its own transform; pixel amounts scale with the input's size.

`colour=True` adds a colour distortion the paper does not use (SimCLR's point: without it,
two crops of one image share their colour histogram, a shortcut for the contrastive loss):
with probability 0.8 a per-channel gain (1 +- 0.4) and offset (+- 0.4 x the image's spread)
about the channel means, then grayscale with probability 0.2. It works on normalised tensors
of any scale.

Only image batches (N, C, H, W) are augmented. Any other input (the test suite's 8-d
vectors, token ids) is returned unchanged: the two views are then the same input, and the
twin differs from the target only by its mask.
"""

from __future__ import annotations

import math

import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF


def is_image_batch(x) -> bool:
    return isinstance(x, torch.Tensor) and x.dim() == 4 and x.is_floating_point()


def _u(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _crop_box(h: int, w: int, g: torch.Generator, scale=(0.7, 1.0), ratio=(0.75, 4 / 3)) -> tuple[int, int, int, int]:
    area = h * w
    for _ in range(10):
        target = area * _u(g, *scale)
        aspect = math.exp(_u(g, math.log(ratio[0]), math.log(ratio[1])))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(torch.randint(0, h - ch + 1, (), generator=g))
            left = int(torch.randint(0, w - cw + 1, (), generator=g))
            return top, left, ch, cw
    return 0, 0, h, w


def augment_one(img: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """One (C, H, W) image through the Table 1 set, parameters from `g`."""
    _, h, w = img.shape
    top, left, ch, cw = _crop_box(h, w, g)
    img = TF.resized_crop(img, top, left, ch, cw, [h, w], antialias=True)
    if float(torch.rand((), generator=g)) < 0.5:
        img = TF.horizontal_flip(img)
    img = TF.rotate(img, _u(g, -15, 15), interpolation=InterpolationMode.BILINEAR)
    tx, ty = round(_u(g, -0.1, 0.1) * w), round(_u(g, -0.1, 0.1) * h)
    img = TF.affine(img, angle=0.0, translate=[tx, ty], scale=_u(g, 0.9, 1.1), shear=[0.0, 0.0],
                    interpolation=InterpolationMode.BILINEAR)
    d = 0.2
    half_w, half_h = w // 2, h // 2
    start = [[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]]
    jitter = [(int(_u(g, 0, d * half_w + 1)), int(_u(g, 0, d * half_h + 1))) for _ in range(4)]
    end = [[jitter[0][0], jitter[0][1]], [w - 1 - jitter[1][0], jitter[1][1]],
           [w - 1 - jitter[2][0], h - 1 - jitter[2][1]], [jitter[3][0], h - 1 - jitter[3][1]]]
    return TF.perspective(img, start, end, interpolation=InterpolationMode.BILINEAR)


def distort_colour(img: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Colour distortion of one (C, H, W) image, parameters from `g` (see the module doc)."""
    c = img.shape[0]
    if float(torch.rand((), generator=g)) < 0.8:
        gain = 1 + 0.4 * (2 * torch.rand(c, generator=g) - 1)
        offset = 0.4 * float(img.std()) * (2 * torch.rand(c, generator=g) - 1)
        mean = img.mean((1, 2), keepdim=True)
        img = (img - mean) * gain.to(img)[:, None, None] + mean + offset.to(img)[:, None, None]
    if float(torch.rand((), generator=g)) < 0.2:
        img = img.mean(0, keepdim=True).expand_as(img)
    return img


def augment(x, generator: torch.Generator, colour: bool = False):
    """An augmented copy of a batch; non-image inputs are returned as they are (identity)."""
    if not is_image_batch(x):
        return x
    one = (lambda img, g: distort_colour(augment_one(img, g), g)) if colour else augment_one
    return torch.stack([one(img, generator) for img in x])


def two_views(x, generator: torch.Generator, same_view: bool = False, colour: bool = False):
    """(x', x''): two independent augmentations, or the same one twice when `same_view`."""
    first = augment(x, generator, colour)
    return (first, first) if same_view else (first, augment(x, generator, colour))

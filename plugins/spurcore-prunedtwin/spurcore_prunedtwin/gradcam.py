"""Grad-CAM maps, baseline (ERM) next to fine-tuned, for a few test images per group (the
paper's Figure 10): `gradcam(model, x, target_class, layer_path)` and the figure `spur gradcam
RUN_DIR` draws (`gradcam_figure`; the command is in `command.py`).

Grad-CAM (Selvaraju et al.): A = the activation (N, C, h, w) of the module at `layer_path`;
weights alpha_c = spatial mean of d logit[target] / d A_c; map = ReLU(sum_c alpha_c A_c),
upsampled bilinearly to the input size and min-max normalised per image to [0, 1].
A transformer's token outputs (N, T, C) are first laid out as the map of its patch tokens,
by the `TokenGrid` its backbone declares (the prefix tokens are left out).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from spurcore.api import SpurcoreError, atomic


class GradCAMError(SpurcoreError):
    """A layer that does not exist or has no spatial output, inputs that are not images, or a
    run with no baseline stage."""


def conv_layers(model: nn.Module) -> list[str]:
    """Paths of the conv modules of `model` and of the blocks that contain one."""
    names = []
    for name, module in model.named_modules():
        if name and any(isinstance(m, nn.Conv2d) for m in module.modules()):
            names.append(name)
    return names


def default_layer(model: nn.Module) -> str:
    """The layer to look at when none is named: the backbone's last declared block, or for a
    transformer the one before it (the last block's patch tokens never reach a class-token head,
    so their gradients are zero)."""
    blocks = model.block_paths() if hasattr(model, "block_paths") else []
    if not blocks:
        raise GradCAMError(f"the backbone declares no blocks; name a layer with --layer (conv layers: "
                           f"{', '.join(conv_layers(model)) or '(none)'})")
    tokens = model.layout.tokens is not None
    return blocks[-2] if tokens and len(blocks) > 1 else blocks[-1]


def find_layer(model: nn.Module, layer_path: str) -> nn.Module:
    modules = dict(model.named_modules())
    if not layer_path or layer_path not in modules:
        raise GradCAMError(f"no layer {layer_path!r} in the model; conv layers: {', '.join(conv_layers(model)) or '(none)'}")
    return modules[layer_path]


@contextlib.contextmanager
def capture(module: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Record `module`'s output while the context is open; the hook is always removed.

    The forward continues on a clone, so in-place ops after the layer (ReLU(inplace=True))
    never modify the recorded activation."""
    store: dict[str, torch.Tensor] = {}

    def hook(mod, inputs, output):
        if not isinstance(output, torch.Tensor):
            raise GradCAMError(f"layer {type(mod).__name__} returns {type(output).__name__}, not a tensor")
        store["activation"] = output
        return output.clone()

    handle = module.register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, training in modes.items():
            m.train(training)


def normalise(maps: torch.Tensor) -> torch.Tensor:
    """Min-max per image to [0, 1]; a constant map becomes zeros."""
    flat = maps.flatten(1)
    low, high = flat.min(1).values, flat.max(1).values
    span = (high - low).clamp_min(1e-12)
    out = (flat - low[:, None]) / span[:, None]
    out = torch.where((high - low)[:, None] > 1e-12, out, torch.zeros_like(out))
    return out.view_as(maps)


def gradcam(model: nn.Module, x: torch.Tensor, target_class: Any, layer_path: str) -> torch.Tensor:
    """Grad-CAM of `target_class` (an int or one class per image) at `layer_path` for images
    `x` (N, C, H, W): a detached (N, H, W) tensor in [0, 1]. The model runs in eval mode (its
    modes are restored), parameter .grad is never touched, no hook outlives the call."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise GradCAMError(f"Grad-CAM needs images (N, C, H, W); got {shape}")
    layer = find_layer(model, layer_path)
    target = torch.as_tensor(target_class, dtype=torch.long, device=x.device)
    if target.ndim == 0:
        target = target.expand(len(x))
    x = x.detach().clone().requires_grad_(True)  # gradients flow even through frozen weights
    with eval_mode(model), torch.enable_grad(), capture(layer) as store:
        logits = model(x)
        if "activation" not in store:
            raise GradCAMError(f"layer {layer_path!r} was not called in the model's forward pass")
        activation = store["activation"]
        layout = getattr(model, "layout", None)
        grid = layout.tokens if layout is not None else None
        if not (activation.ndim == 4 or (activation.ndim == 3 and grid is not None)):
            raise GradCAMError(f"layer {layer_path!r} has output shape {tuple(activation.shape)}, not (N, C, h, w)"
                               f"{' or tokens' if grid is not None else ''}; conv layers: {', '.join(conv_layers(model))}")
        if target.shape != (len(x),) or bool(((target < 0) | (target >= logits.shape[1])).any()):
            raise GradCAMError(f"target classes must be one per image in 0..{logits.shape[1] - 1}, "
                               f"got {target.tolist()}")
        score = logits.gather(1, target[:, None]).sum()
        (grads,) = torch.autograd.grad(score, activation)
    if activation.ndim == 3:
        activation, grads = grid.feature_map(activation.detach()), grid.feature_map(grads)
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * activation).sum(1, keepdim=True)).detach()
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return normalise(cam.float())


# --- the figure -------------------------------------------------------------------------------


def pick_examples(groups: np.ndarray, n_groups: int, per_group: int, seed: int) -> list[tuple[int, np.ndarray]]:
    """(group, sorted indices) for every group with test examples, `per_group` each (fewer if
    the group is smaller), drawn with `seed`."""
    rng = np.random.default_rng(seed)
    picked = []
    for g in range(n_groups):
        members = np.flatnonzero(groups == g)
        if members.size:
            picked.append((g, np.sort(rng.choice(members, size=min(per_group, members.size), replace=False))))
    return picked


def image_batch(inputs: Any, indices: np.ndarray) -> torch.Tensor:
    if isinstance(inputs, torch.Tensor):
        x = inputs[torch.as_tensor(indices)]
    else:
        items = [inputs[int(i)] for i in indices]
        if not all(isinstance(item, torch.Tensor) for item in items):
            raise GradCAMError(f"Grad-CAM needs image tensors; the test split yields {type(items[0]).__name__}")
        x = torch.stack(items)
    if x.ndim != 4:
        raise GradCAMError(f"Grad-CAM needs image inputs (C, H, W); the test split's inputs have shape {tuple(x.shape[1:])}")
    return x.float()


def display(image: torch.Tensor) -> np.ndarray:
    """Min-max per image to [0, 1], channels last (a single channel is dropped)."""
    img = image.detach().cpu().float()
    img = (img - img.min()) / (img.max() - img.min()).clamp_min(1e-12)
    img = img.permute(1, 2, 0).numpy()
    return img[..., 0] if img.shape[-1] == 1 else img


def figure(rows: list[dict[str, Any]], labels: tuple[str, str], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 3, figsize=(7.5, 2.6 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        img = row["image"]
        cmap = "gray" if img.ndim == 2 else None
        axes[r, 0].imshow(img, cmap=cmap)
        axes[r, 0].set_title(f"{row['group']} (#{row['index']})", fontsize=8)
        for c, (label, cam, pred) in enumerate(zip(labels, row["cams"], row["preds"]), start=1):
            axes[r, c].imshow(img, cmap=cmap)
            axes[r, c].imshow(cam, cmap="jet", alpha=0.5, vmin=0, vmax=1)
            verdict = "correct" if pred == row["y"] else "wrong"
            axes[r, c].set_title(f"{label}: {row['class_names'][pred]} ({verdict})", fontsize=8,
                                 color="green" if verdict == "correct" else "red")
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    atomic.write_figure(fig, out, dpi=100)
    return out


def gradcam_figure(run_dir: Path, plugins, *, baseline_stage: int = 0, stage: int = -1,
                   baseline_run: Path | None = None, layer: str | None = None, per_group: int = 3,
                   seed: int = 0, out: Path | None = None, device: str = "cpu") -> dict[str, Any]:
    from spurcore.api import open_run

    run = open_run(run_dir, plugins, device=device)
    data = run.data
    stages = run.stages
    test = data.splits["test"]
    groups = data.groups("test")
    if groups is None:
        raise GradCAMError(f"{run_dir}: the test split has no attribute labels, so no groups to show")
    if baseline_run is not None:
        base = open_run(baseline_run, plugins, device=device)
        baseline = base.load_model(-1)
        base_label = f"baseline ({base.stages[-1].key})"
    else:
        if len(stages) < 2:
            init = run.config.init
            hint = f" (it started from {init.run!r} through [init])" if init is not None else ""
            raise GradCAMError(f"{run_dir}: a single-stage run{hint} has no baseline stage; "
                               f"name the run it started from with --baseline-run DIR")
        baseline = run.load_model(baseline_stage)
        base_label = stages[baseline_stage].key
    tuned = run.load_model(stage)
    tuned_label = stages[stage].key
    layer = layer or default_layer(tuned)
    for model in (baseline, tuned):
        find_layer(model, layer)

    rows = []
    for g, indices in pick_examples(groups, data.n_groups, per_group, seed):
        x = image_batch(test.inputs, indices)
        y = torch.as_tensor(test.y[indices])
        cams, preds = [], []
        for model in (baseline, tuned):
            dev = next(model.parameters()).device
            cams.append(gradcam(model, x.to(dev), y.to(dev), layer).cpu().numpy())
            with torch.no_grad(), eval_mode(model):
                preds.append(model(x.to(dev)).argmax(1).cpu().numpy())
        for j, i in enumerate(indices):
            rows.append({"group": data.group_names[g], "index": int(i), "y": int(y[j]), "image": display(x[j]),
                         "cams": [cams[0][j], cams[1][j]], "preds": [int(preds[0][j]), int(preds[1][j])],
                         "class_names": data.class_names})
    if not rows:
        raise GradCAMError(f"{run_dir}: no test examples")
    path = figure(rows, (base_label, tuned_label), Path(out) if out else Path(run_dir) / "gradcam.png")
    correct = {label: sum(r["preds"][k] == r["y"] for r in rows) for k, label in enumerate((base_label, tuned_label))}
    return {"figure": path, "images": len(rows), "correct": correct, "labels": (base_label, tuned_label),
            "layer": layer}

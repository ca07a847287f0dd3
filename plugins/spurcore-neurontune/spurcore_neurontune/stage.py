"""NeuronTune's computation (spuriousness, bias dimensions, the head's retraining, SFit) and
its stage object; imported when a NeuronTune stage or the SFit selector runs."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from spurcore import hookimpl
from spurcore.api import Device, atomic, balanced_weights, extract, linear_head
from spurcore_neurontune import NeuronTuneError, NeuronTuneOptions


def spuriousness(features: np.ndarray, y: np.ndarray, correct: np.ndarray, n_classes: int) -> np.ndarray:
    """delta[i, c] = median of feature i over misclassified class-c examples minus its median
    over correctly classified ones; 0 where a class has no example of one kind (undefined)."""
    delta = np.zeros((features.shape[1], n_classes))
    for c in range(n_classes):
        wrong, right = (y == c) & ~correct, (y == c) & correct
        if wrong.any() and right.any():
            delta[:, c] = np.median(features[wrong], 0) - np.median(features[right], 0)
    return delta


def bias_dimensions(delta: np.ndarray, quantifier: str = "all", threshold: float = 0.0) -> np.ndarray:
    """Dimensions whose delta exceeds `threshold` for all (or any) classes, sorted."""
    above = delta > threshold
    return np.flatnonzero(above.all(1) if quantifier == "all" else above.any(1))


def above_per_class(delta: np.ndarray, threshold: float = 0.0) -> list[int]:
    """How many dimensions exceed `threshold` in each class: with the "all" quantifier the rule
    selects the dimensions counted in every class, so these say why it selects few or none."""
    return (delta > threshold).sum(0).astype(int).tolist()


def sfit(delta: np.ndarray) -> float:
    return float(np.abs(delta).sum())


def predictions(head: torch.nn.Module, features: np.ndarray, rows: int = 65536) -> np.ndarray:
    """The head's predicted class of every row of `features`, `rows` at a time."""
    with torch.no_grad():
        weight, bias = head.weight.detach().cpu(), head.bias.detach().cpu()
        return np.concatenate([(torch.from_numpy(np.asarray(features[i:i + rows], dtype=np.float32)) @ weight.T + bias)
                               .argmax(1).numpy() for i in range(0, len(features), rows)])


def retrain_head(head: torch.nn.Module, features: np.ndarray, y: np.ndarray, zeroed: np.ndarray,
                 options: NeuronTuneOptions) -> torch.nn.Linear:
    """Retrain a copy of `head` on features with `zeroed` dimensions set to 0, sampling classes
    equally (with replacement, as many draws per epoch as examples). Each batch's rows are
    gathered from `features` as it is drawn, so memory-mapped features are never copied whole."""
    targets = torch.tensor(y)
    new = linear_head(head.weight.detach().cpu(), head.bias.detach().cpu())
    optimizer = torch.optim.Adam(new.parameters(), lr=options.lr, weight_decay=options.weight_decay)
    generator = torch.Generator().manual_seed(options.seed)
    weights = torch.from_numpy(balanced_weights(y))
    for _ in range(options.epochs):
        order = torch.multinomial(weights, len(y), replacement=True, generator=generator)
        for idx in torch.split(order, options.batch_size):
            x = torch.from_numpy(np.asarray(features[idx.numpy()], dtype=np.float32))
            x[:, zeroed] = 0
            loss = F.cross_entropy(new(x), targets[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        new.weight[:, zeroed] = 0  # the zeroed inputs never reach the logits
    return new


def plot_delta(delta: np.ndarray, chosen: np.ndarray, class_names, path, threshold: float = 0.0) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = np.argsort(-delta.min(1))
    fig, (top, bottom, spread) = plt.subplots(3, 1, figsize=(9, 8.5), height_ratios=[1, 1.3, 1.3])
    image = top.imshow(delta[order].T, aspect="auto", cmap="coolwarm",
                       vmin=-np.abs(delta).max(), vmax=np.abs(delta).max(), interpolation="nearest")
    top.set_yticks(range(len(class_names)), class_names)
    top.set_title("spuriousness delta[i, y] (dimensions sorted by min over classes)")
    fig.colorbar(image, ax=top, fraction=0.03)
    colours = ["tab:red" if i in set(chosen.tolist()) else "tab:gray" for i in order]
    bottom.bar(range(len(order)), delta[order].min(1), color=colours, width=1.0)
    bottom.axhline(0, color="black", lw=0.8)
    bottom.set_xlabel("embedding dimension (sorted)")
    bottom.set_ylabel("min over classes of delta")
    bottom.set_title(f"{len(chosen)} bias dimensions (red) zeroed; SFit = {sfit(delta):.2f}")
    bins = np.linspace(delta.min(), delta.max(), 41) if delta.max() > delta.min() else 10
    for c, (name, count) in enumerate(zip(class_names, above_per_class(delta, threshold))):
        spread.hist(delta[:, c], bins=bins, histtype="step", lw=1.5, label=f"{name}: {count} above")
    spread.axvline(threshold, color="black", lw=0.8, ls="--")
    spread.set_xlabel("delta (median over the misclassified minus over the correct)")
    spread.set_ylabel("dimensions")
    spread.set_title(f"delta per class; the threshold {threshold:g} dashed")
    spread.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    atomic.write_figure(fig, path, dpi=110)


class NeuronTune:
    def __init__(self, options: NeuronTuneOptions) -> None:
        self.options = options

    @hookimpl
    def spurcore_posthoc_head(self, run, stage, model, embeddings):
        options = self.options
        ident = embeddings[options.identification_split]
        correct = predictions(model.head, ident.features) == ident.y
        delta = spuriousness(ident.features, ident.y, correct, run.data.n_classes)
        chosen = bias_dimensions(delta, options.quantifier, options.threshold)
        if len(chosen) == delta.shape[0]:
            raise NeuronTuneError(
                f"stage {stage.key}: every one of the {len(chosen)} embedding dimensions passes "
                f"quantifier={options.quantifier!r}, threshold={options.threshold}; zeroing them all "
                f"leaves nothing to classify with. Use quantifier = \"all\" or a higher threshold"
            )
        tune = embeddings[options.tuning_split]
        head = retrain_head(model.head, tune.features, tune.y, chosen, options)
        folder = run.out.stage_dir(stage.key)
        above = above_per_class(delta, options.threshold)
        atomic.write_json(folder / "neurontune.json", {
            "identification_split": options.identification_split, "quantifier": options.quantifier,
            "threshold": options.threshold, "misclassified": int((~correct).sum()),
            "bias_dimensions": chosen.tolist(), "above_per_class": above,
            "sfit": sfit(delta), "delta": delta.tolist(),
        })
        plot_delta(delta, chosen, run.data.class_names, folder / "delta.png", options.threshold)
        counts = ", ".join(f"{name} {count}" for name, count in zip(run.data.class_names, above))
        run.log(f"stage {stage.key}: NeuronTune zeroed {len(chosen)} of {delta.shape[0]} dimensions "
                f"(above {options.threshold:g} per class: {counts}; {options.quantifier} of them); SFit {sfit(delta):.3f}")
        return head


def sfit_score(candidate) -> float:
    """SFit of a candidate model on the validation set (no attribute labels)."""
    model = candidate.load_model()
    device = Device(next(model.parameters()).device)
    val = extract(model, candidate.data, device, splits=("val",))["val"]
    correct = predictions(model.head, val.features) == val.y
    return sfit(spuriousness(val.features, val.y, correct, candidate.data.n_classes))

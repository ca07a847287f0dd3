"""Check that waterdigits behaves like Waterbirds for a small CNN on a CPU.

Trains plain ERM (fixed model and recipe) for several seeds and reports:
  * the test gap (average - worst-group accuracy) for epochs selected by val
    worst-class accuracy, by val worst-group accuracy, and at the last epoch;
  * a DFR-like probe: L1 logistic regression on the selected model's features,
    fitted on a group-balanced val subset, scored by test worst-group accuracy
    (must beat ERM by a wide margin, otherwise last-layer methods have nothing
    to recover);
  * seconds per epoch (training + evaluation).

Plain PyTorch on purpose: it tests the data, not the framework.
Usage: python benchmarks/waterdigits_check.py [--seeds 0 1 2] [--epochs 10]
"""

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from spurcore.builtins.waterdigits_gen import generate  # noqa: E402

DFR_CS = (1.0, 0.3, 0.1, 0.03)


class SmallCNN(nn.Module):  # features 128-d
    def __init__(self, in_ch=3, width=32):
        super().__init__()

        def block(i, o, pool):
            layers = [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True)]
            if pool:
                layers.append(nn.MaxPool2d(2))
            return nn.Sequential(*layers)

        self.block1 = block(in_ch, width, True)
        self.block2 = block(width, 2 * width, True)
        self.block3 = block(2 * width, 4 * width, False)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return self.pool(self.block3(self.block2(self.block1(x)))).flatten(1)


def to_tensors(split):
    x, y, a = split
    x = (torch.from_numpy(x).float() / 255 - 0.5) / 0.5
    return x, torch.from_numpy(y), torch.from_numpy(y * 2 + a)


def metrics(pred, y, g):
    """Average, worst-group and worst-class accuracy."""
    correct = (pred == y).float()
    wga = min(correct[g == k].mean().item() for k in range(4) if (g == k).any())
    wca = min(correct[y == c].mean().item() for c in range(2))
    return {"avg": correct.mean().item(), "wga": wga, "wca": wca}


@torch.no_grad()
def embed(features, x, batch=1024):
    features.eval()
    return torch.cat([features(x[i:i + batch]) for i in range(0, len(x), batch)])


def balanced_subset(g, rng):
    """Indices with every group cut to the size of the smallest one."""
    n = min(int((g == k).sum()) for k in range(4))
    return np.concatenate([rng.choice(np.flatnonzero(g == k), n, replace=False) for k in range(4)])


def dfr_probe(feats_val, val, feats_test, test, seed):
    """Test WGA of L1 logistic regression on a group-balanced val subset, per C."""
    y_val, g_val = val[1].numpy(), val[2].numpy()
    idx = balanced_subset(g_val, np.random.default_rng(seed))
    scaler = StandardScaler().fit(feats_val[idx])
    out = {}
    for c in DFR_CS:
        clf = LogisticRegression(l1_ratio=1.0, solver="liblinear", C=c)
        clf.fit(scaler.transform(feats_val[idx]), y_val[idx])
        pred = torch.from_numpy(clf.predict(scaler.transform(feats_test)))
        out[str(c)] = metrics(pred, test[1], test[2])["wga"]
    return out


def run(seed, data, epochs):
    torch.manual_seed(seed)
    features = SmallCNN()
    model = nn.Sequential(features, nn.Linear(128, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    shuffle = torch.Generator().manual_seed(seed)
    (xt, yt, _), val, test = data["train"], data["val"], data["test"]
    history, best = [], {}
    for epoch in range(epochs):
        start = time.perf_counter()
        model.train()
        for idx in torch.randperm(len(xt), generator=shuffle).split(64):
            loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            rec = {split: metrics(model[1](embed(features, s[0])).argmax(1), s[1], s[2])
                   for split, s in (("val", val), ("test", test))}
        rec["seconds"] = time.perf_counter() - start
        history.append(rec)
        print(f"seed {seed} epoch {epoch}: " + "  ".join(
            f"{k} avg {rec[k]['avg']:.3f} wga {rec[k]['wga']:.3f} wca {rec[k]['wca']:.3f}" for k in ("val", "test"))
              + f"  {rec['seconds']:.1f}s", flush=True)
        for rule in ("wca", "wga"):
            if rule not in best or rec["val"][rule] > history[best[rule][0]]["val"][rule]:
                best[rule] = (epoch, copy.deepcopy(features.state_dict()))
    result = {"seconds_per_epoch": float(np.mean([h["seconds"] for h in history]))}
    for rule, (epoch, state) in best.items():
        features.load_state_dict(state)
        t = history[epoch]["test"]
        dfr = dfr_probe(embed(features, val[0]).numpy(), val, embed(features, test[0]).numpy(), test, seed)
        result[f"select_{rule}"] = {"epoch": epoch, "test_avg": t["avg"], "test_wga": t["wga"],
                                    "gap": t["avg"] - t["wga"], "dfr_wga": dfr,
                                    "dfr_gain_at_0.1": dfr["0.1"] - t["wga"]}
    last = history[-1]["test"]
    result["last"] = {"test_avg": last["avg"], "test_wga": last["wga"], "gap": last["avg"] - last["wga"]}
    return result


def mean_of(results):
    """Leaf-wise mean over seeds of the nested result dicts."""
    first = results[0]
    if isinstance(first, dict):
        return {k: mean_of([r[k] for r in results]) for k in first}
    return float(np.mean(results))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=28)
    args = parser.parse_args()
    torch.set_num_threads(2)
    start = time.perf_counter()
    data = {k: to_tensors(v) for k, v in generate(seed=args.data_seed, size=args.size).items()}
    print(f"generated in {time.perf_counter() - start:.1f}s", flush=True)
    per_seed = {str(s): run(s, data, args.epochs) for s in args.seeds}
    print(json.dumps({"per_seed": per_seed, "mean": mean_of(list(per_seed.values()))}, indent=1))


if __name__ == "__main__":
    main()

"""benchmarks/memorization_estimators.py on hand-made score folders: its correlations, overlaps,
gaps and costs against numbers worked out here, and the files it writes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from scipy import stats

_spec = importlib.util.spec_from_file_location(
    "memorization_estimators", Path(__file__).resolve().parents[1] / "benchmarks" / "memorization_estimators.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

NAMES = ["big/a", "small/b", "big/b"]  # "small/b" is the minority group
GROUP = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2] * 5)  # 60 examples
Y = np.array([0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1] * 5)


def write_seed(folder: Path, scores: np.ndarray, cost: dict | None = None) -> None:
    folder.mkdir(parents=True)
    with h5py.File(folder / "scores.h5", "w") as handle:
        train = handle.create_group("train")
        train.attrs["group_names"] = NAMES
        for key, value in (("index", np.arange(len(scores))), ("y", Y), ("group", GROUP), ("memorization", scores)):
            train.create_dataset(key, data=value)
    summary = {"groups": {name: {} for name in NAMES}, "minority_groups": ["small/b"],
               **({"cost": cost} if cost else {})}
    (folder / "scores.json").write_text(json.dumps(summary))


@pytest.fixture
def folders(tmp_path):
    rng = np.random.default_rng(0)
    fz, one = tmp_path / "fz", tmp_path / "one"
    made = {}
    for seed in (0, 1):
        reference = rng.random(60)
        reference[[5, 40]] = np.nan  # undefined in Feldman-Zhang: left out of every comparison
        made[seed] = {"fz": reference, "same": np.where(np.isnan(reference), 7.0, 3 * reference + 1),
                      "noisy": rng.random(60)}
        write_seed(fz / f"seed{seed}", reference)
        write_seed(one / "same" / f"seed{seed}", made[seed]["same"], {"cpu_minutes": 1.5 + seed})
        write_seed(one / "noisy" / f"seed{seed}", made[seed]["noisy"], {"cpu_minutes": 2.0})
    (fz / "summary.json").write_text(json.dumps({"seeds": [0, 1], "launch": {
        "wall_seconds": 600.0, "jobs": 2, "threads": 1, "trials_run": 16, "trials_finished_earlier": 0}}))
    (one / "memorization.json").write_text(json.dumps({"estimators": ["same", "noisy"]}))
    for name in ("same", "noisy"):
        (one / name).mkdir(exist_ok=True)
        (one / name / "summary.json").write_text(json.dumps({"seeds": [0, 1, 2]}))  # seed 2: not in fz, not compared
    return fz, one, made


def test_the_numbers_match_those_computed_by_hand(folders):
    fz, one, made = folders
    result = bench.compare(fz, one, 0.05)
    assert result["fz_cpu_minutes_per_seed"] == pytest.approx(600 * 2 / 60 / 2)  # 10 per seed
    same, noisy = result["estimators"]["same"], result["estimators"]["noisy"]
    assert same["seeds"] == [0, 1] and same["per_seed"]["0"]["examples"] == 58
    for seed in (0, 1):
        row, defined = same["per_seed"][str(seed)], ~np.isnan(made[seed]["fz"])
        assert row["spearman"]["overall"] == pytest.approx(1.0)  # a monotone function of the reference
        assert row["top_overlap"] == 1.0 and row["cpu_minutes"] == 1.5 + seed
        a, b = made[seed]["fz"][defined], made[seed]["noisy"][defined]
        found = noisy["per_seed"][str(seed)]
        assert found["spearman"]["overall"] == pytest.approx(stats.spearmanr(a, b).statistic)
        for g, name in enumerate(NAMES):
            in_group = GROUP[defined] == g
            assert found["spearman"][name] == pytest.approx(stats.spearmanr(a[in_group], b[in_group]).statistic)
        k = 3  # ceil(0.05 * 58)
        top_fz, top_noisy = set(np.argsort(-a)[:k]), set(np.argsort(-b)[:k])
        assert found["top_overlap"] == pytest.approx(len(top_fz & top_noisy) / k)
        minority = GROUP[defined] == 1
        gap = b[minority].mean() - b[~minority].mean()
        assert found["gap"]["minority"] == pytest.approx(b[minority].mean())
        assert found["gap"]["gap"] == pytest.approx(gap) and found["gap"]["gap_sd"] == pytest.approx(gap / b.std())
        assert found["fz_gap"]["gap"] == pytest.approx(a[minority].mean() - a[~minority].mean())
    per_seed = [noisy["per_seed"][s]["spearman"]["overall"] for s in ("0", "1")]
    assert noisy["spearman"]["overall"] == {"mean": pytest.approx(np.mean(per_seed)),
                                            "std": pytest.approx(np.std(per_seed))}
    assert same["cpu_minutes"] == {"mean": 2.0, "std": 0.5}


def test_a_group_too_small_or_constant_has_no_correlation_and_ties_go_to_the_lower_position():
    assert bench.spearman(np.array([1.0, 2.0]), np.array([2.0, 1.0])) is None
    assert bench.spearman(np.array([1.0, 2.0, 3.0]), np.array([5.0, 5.0, 5.0])) is None
    assert bench.top(np.array([0.0, 1.0, 1.0, 0.5]), 0.5).tolist() == [1, 2]
    assert bench.top_overlap(np.array([3.0, 2.0, 1.0, 0.0]), np.array([0.0, 2.0, 1.0, 3.0]), 0.5) == 0.5


def test_the_script_writes_its_json_and_figure(folders, tmp_path, capsys):
    fz, one, _ = folders
    bench.main(["--fz", str(fz), "--one-run", str(one), "--out", str(tmp_path / "r" / "e.json"),
                "--figure", str(tmp_path / "r" / "e.png")])
    written = json.loads((tmp_path / "r" / "e.json").read_text())
    assert set(written["estimators"]) == {"same", "noisy"} and written["top_share"] == 0.05
    assert (tmp_path / "r" / "e.png").stat().st_size > 10_000
    assert "same: Spearman 1.000 ± 0.000, top 5% overlap 1.000 ± 0.000" in capsys.readouterr().out

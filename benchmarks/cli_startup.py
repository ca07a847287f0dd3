"""How long `spur` takes to answer before it does any work: `spur --help`, `spur list
mitigations` and `spur plugins`, each in a fresh process with every installed plugin, against
a Python that only imports what the command line is made of (`import click, pluggy, attrs`).

Each round runs every command once, in turn, so machine noise hits them alike; the figure per
command is the median wall time over the rounds. Prints JSON {"rounds", "baseline_s",
"commands": {command: seconds}, "over_baseline_s": {command: seconds}}.

    python benchmarks/cli_startup.py [--rounds 5] [--out docs/results/cli_startup.json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from rounds import emit

BASELINE = "python -c 'import click, pluggy, attrs'"
COMMANDS = {
    BASELINE: [sys.executable, "-c", "import click, pluggy, attrs"],
    "spur --help": [sys.executable, "-m", "spurcore", "--help"],
    "spur list mitigations": [sys.executable, "-m", "spurcore", "list", "mitigations"],
    "spur plugins": [sys.executable, "-m", "spurcore", "plugins"],
}


def wall_time(argv: list[str]) -> float:
    env = {k: v for k, v in os.environ.items() if k != "SPURCORE_PLUGINS"}  # every installed plugin
    start = time.perf_counter()
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def measure(rounds: int) -> dict:
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for argv in COMMANDS.values():  # warm the file cache once
        wall_time(argv)
    for _ in range(rounds):
        for name, argv in COMMANDS.items():
            times[name].append(wall_time(argv))
    median = {name: round(statistics.median(values), 3) for name, values in times.items()}
    baseline = median.pop(BASELINE)
    return {"rounds": rounds, "baseline": BASELINE, "baseline_s": baseline, "commands": median,
            "over_baseline_s": {name: round(seconds - baseline, 3) for name, seconds in median.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, help="Also write the JSON here.")
    args = parser.parse_args()
    result = measure(args.rounds)
    emit(result, args.out)


if __name__ == "__main__":
    main()

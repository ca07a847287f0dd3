"""`python -m spurcore_sweep SPEC.json RECORD.json`: one trial in a process of its own, for a
launcher whose scheduler runs commands, not Python functions (a job script, ssh, a container):
`run_trial` on the spec the launcher's `submit` received, saved as JSON, and the trial's
record written to RECORD.json (whole or not at all), for the launcher's `wait` to read."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from spurcore.api import atomic
from spurcore_sweep.trials import run_trial


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise SystemExit("usage: python -m spurcore_sweep SPEC.json RECORD.json")
    spec, record = map(Path, argv)
    atomic.write_json(record, run_trial(json.loads(spec.read_text())))


if __name__ == "__main__":
    main(sys.argv[1:])

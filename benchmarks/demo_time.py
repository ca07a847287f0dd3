"""Time `make demo` from nothing (after `make install`, which is not timed): wall seconds and the CPU seconds of every
process it starts, into a fresh directory. The goal: 10 minutes of wall time on 2 idle cores.

    python benchmarks/demo_time.py [--out /tmp/spurcore-demo]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="/tmp/spurcore-demo")
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    root = Path(__file__).resolve().parent.parent
    subprocess.run(["make", "-s", "install"], cwd=root, check=True)  # not timed: done once per machine
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(["make", "-s", "demo", f"DEMO_OUT={args.out}"], cwd=root, capture_output=True, text=True)
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    manifest = json.loads((Path(args.out) / "sweep.json").read_text())
    print(json.dumps({
        "wall_s": round(wall, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime - before.ru_utime - before.ru_stime, 1),
        "cores": os.cpu_count(), "load_avg_1min_at_end": round(os.getloadavg()[0], 2),
        "trials": len(manifest["trials"]),
        "done": sum(1 for t in manifest["trials"] if (t.get("record") or {}).get("status") == "done"),
        "exit_code": done.returncode,
    }))
    print(done.stdout[-4000:])


if __name__ == "__main__":
    main()

"""README command 1 (``python -m qpipe.main``, after the install) twice: on an idle machine, then beside a CPU hog.

Each run gets a fresh DAGSTER_HOME and QPIPE_HOME, as on a new clone. The hog is N processes
spinning in pure Python (N = 2 by default: as many as this project's reference machine has
cores), started before the run and stopped after it. Printed per run: wall time, console lines,
the longest silence while models train, and the slowdown ratio of the loaded run.

    python -m qpipe.bench quickstart                 # idle, then beside a 2-process hog
    python -m qpipe.bench quickstart --hogs 0        # idle only
    python -m qpipe.bench quickstart -- --models mlp # arguments after -- go to qpipe.main
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HOG = "while True: pass"


def run_main(extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="qpipe-quickstart-") as root:
        home = Path(root) / "dagster_home"
        home.mkdir()
        shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
        env = {**os.environ, "DAGSTER_HOME": str(home), "QPIPE_HOME": str(Path(root) / "qpipe"), "PYTHONUNBUFFERED": "1"}
        began = time.monotonic()
        process = subprocess.Popen([sys.executable, "-m", "qpipe.main", *extra], cwd=REPO, env=env, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        lines = [(time.monotonic() - began, line.rstrip("\n")) for line in process.stdout]
        code = process.wait()
        seconds = time.monotonic() - began
    training = [t for t, line in _between(lines, "[3/5]", "[4/5]")]
    return {"seconds": seconds, "code": code, "lines": lines,
            "training_gap": max((b - a for a, b in zip(training, training[1:])), default=float("nan"))}


def _between(lines: list[tuple[float, str]], start: str, stop: str) -> list[tuple[float, str]]:
    inside, out = False, []
    for item in lines:
        if item[1].startswith(start):
            inside = True
        elif item[1].startswith(stop):
            break
        if inside:
            out.append(item)
    return out


def report(name: str, result: dict) -> None:
    minutes, seconds = divmod(result["seconds"], 60)
    print(f"{name:<22} {int(minutes)} min {seconds:4.1f} s   exit {result['code']}   {len(result['lines'])} console lines   "
          f"longest silence while training {result['training_gap']:.1f} s", flush=True)
    stages = [line.split("  (run")[0] for _, line in result["lines"] if line.startswith("[")]
    took = [line.split()[-1] for _, line in result["lines"] if line.strip().startswith(("succeeded in", "failed in"))]
    print("    " + ";  ".join(f"{stage.split(']')[0][1:]} {stage.split('] ')[1].split()[0]} {t}"
                              for stage, t in zip(stages, took)), flush=True)
    if result["code"] != 0:
        print("\n".join(line for _, line in result["lines"][-30:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hogs", type=int, default=2, help="CPU-hog processes beside the second run (0: idle only)")
    parser.add_argument("--show", action="store_true", help="print the idle run's console output")
    parser.add_argument("--skip-idle", action="store_true", help="only the run beside the hog")
    parser.add_argument("main_args", nargs="*", help="arguments for qpipe.main (after --)")
    args = parser.parse_args()
    print(f"README command 1 on {os.cpu_count()} cores", flush=True)
    idle = None
    if not args.skip_idle:
        idle = run_main(args.main_args)
        report("idle", idle)
        if args.show:
            print("\n".join(line for _, line in idle["lines"]))
    if args.hogs:
        hogs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(args.hogs)]
        try:
            loaded = run_main(args.main_args)
        finally:
            for hog in hogs:
                hog.kill()
        report(f"beside {args.hogs} CPU hogs", loaded)
        if idle is not None:
            print(f"slowdown under load: {loaded['seconds'] / idle['seconds']:.2f}x")


if __name__ == "__main__":
    main()

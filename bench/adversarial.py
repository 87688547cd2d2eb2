"""The long adversarial run (issue 11, point D): the engine against the hostile paper exchange, >= 10,000 steps
per seed over several seeds, every fault profile, in virtual time; and a run against the fake CLOB through the
real adapter. The invariants are checked after every step (tests/adversarial/watch.py); CI runs a short version
(tests/adversarial/).

Prints, per run: steps, seed, faults injected, invariant checks done, virtual and real time; and for a failure the
broken promise, its issue point, the command that replays it and the steps on the position. Exit code 1 when any
run broke a promise.

    python bench/adversarial.py [--seeds 1,2,3] [--steps 10000] [--profile hostile,...|all] [--clob-steps 500]
                                [--keep-going]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from loguru import logger

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from adversarial.clob_run import run_clob  # noqa: E402
from adversarial.paper_run import PROFILES, RunReport, run_paper  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated seeds (default 1,2,3)")
    parser.add_argument("--steps", type=int, default=10_000, help="steps per seed and profile (default 10,000)")
    parser.add_argument("--profile", default="all", help=f"comma-separated, or all: {', '.join(PROFILES)}")
    parser.add_argument("--clob-steps", type=int, default=500, help="steps of the fake CLOB run per seed (0: skip)")
    parser.add_argument("--keep-going", action="store_true", help="do not stop a run at its first violation")
    args = parser.parse_args()
    seeds = [int(seed) for seed in args.seeds.split(",") if seed.strip()]
    names = list(PROFILES) if args.profile == "all" else [name.strip() for name in args.profile.split(",")]
    unknown = [name for name in names if name not in PROFILES and name != "fakeclob"]
    if unknown:
        parser.error(f"unknown profile(s) {unknown}; choose from {', '.join(PROFILES)}, fakeclob")
    logger.remove()  # the engine's logs are the run's biggest cost; the report below says what matters
    logging.getLogger("py_clob_client_v2").setLevel(logging.CRITICAL)  # each injected HTTP fault, on stderr
    reports: list[RunReport] = []
    with tempfile.TemporaryDirectory(prefix="exitguard-adversarial-") as folder:
        for name in names:
            for seed in seeds:
                journals = Path(folder) / f"{name}-{seed}"
                journals.mkdir()
                started = time.perf_counter()
                if name == "fakeclob":
                    report = run_clob(seed, args.clob_steps, journals)
                else:
                    report = run_paper(seed, args.steps, PROFILES[name], journals, keep_going=args.keep_going)
                reports.append(report)
                show(report, time.perf_counter() - started)
        if args.clob_steps and "fakeclob" not in names:
            for seed in seeds:
                journals = Path(folder) / f"fakeclob-{seed}"
                journals.mkdir()
                started = time.perf_counter()
                reports.append(run_clob(seed, args.clob_steps, journals))
                show(reports[-1], time.perf_counter() - started)
    failed = [report for report in reports if report.violations]
    faults: Counter[str] = Counter()
    for report in reports:
        faults.update(report.faults)
    print(f"\n{len(reports)} runs, {sum(r.steps for r in reports):,} steps, seeds {seeds}, "
          f"{sum(faults.values()):,} faults injected, {sum(r.checks for r in reports):,} invariant checks; "
          f"{len(failed)} failed" + (f": seeds {sorted({(r.profile, r.seed) for r in failed})}" if failed else ""))
    print("faults: " + ", ".join(f"{name} {count:,}" for name, count in sorted(faults.items())))
    return 1 if failed else 0


def show(report: RunReport, seconds: float) -> None:
    verdict = "ok" if not report.violations else f"FAILED ({len(report.violations)} violations)"
    faults = sum(report.faults.values())
    print(f"{report.profile:16} seed {report.seed:<5} {report.steps:>7,} steps  {faults:>6,} faults"
          f"  {report.checks:>9,} checks  {report.virtual_seconds:>9,.0f} s virtual  {seconds:6.1f} s real  {verdict}",
          flush=True)
    if report.violations:
        print("    " + report.explain().replace("\n", "\n    "), flush=True)


if __name__ == "__main__":
    sys.exit(main())

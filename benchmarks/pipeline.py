"""Stage timings at three shop sizes: wall time, peak memory and throughput of every pipeline step.

    python -m benchmarks.pipeline --scale S|M|L     (or `make bench SCALE=S`)

It generates the shop once per scale under var/bench/<scale>/raw (kept for later runs), then runs the shop's
first night in an emptied var/bench/<scale>/var, each step the way a Kubeflow component or an Airflow worker
runs it: as its own process, `python -m tasks.<step>`, so the peak RSS of each step is its own. Every step whose
upstream steps are done starts at once, as Airflow's scheduler starts them (train_retrieval beside train_ranker,
refit_retrieval beside train_ranking, evaluate and refit_ranker),
and the shards of a sharded step run as parallel processes, as Airflow's mapped tasks would. The night's time
(`night_seconds`) runs from the first step's start to the last one's end; `steps_seconds` adds up the steps'.
Each step's `cpu_seconds` (user and system time of its processes, from the kernel) over its wall time is how many
cores it kept busy (`cores_busy`); the night's `cpu_seconds` over the machine's cores is `night_bound_seconds`,
the least time this much work takes here however the steps are packed: only less work goes below it.
Writes var/bench/<scale>.json and .md, and, from every scale measured so far, var/bench/scaling.md with
time(M)/time(S) and time(L)/time(M) per step beside the same ratios of the work each step did. Beside each
step's time stands its floor on this machine and how many times the floor the step took (`benchmarks.floors`:
the rates are measured first, in the same run).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer

from benchmarks.floors import Rates, measure_rates, step_floor
from benchmarks.topk import significant
from pipelines.nightly import topological
from pipelines.runner import shards, step_threads
from tasks.sources.generate import ShopSpec, generate

END = date(2026, 11, 22)
SCALES = {  # events, users, items over the default 28-day lookback (+2 days of slack)
    "S": ShopSpec(days=30, users=10_000, items=5_000, events=100_000, seed=42, end=END),
    "M": ShopSpec(days=30, users=100_000, items=20_000, events=1_000_000, seed=42, end=END),
    "L": ShopSpec(days=30, users=1_000_000, items=100_000, events=10_000_000, seed=42, end=END),
}
# What each step's throughput counts, read from its own printed result or an earlier one.
UNITS = {"validate_raw": "rows (events, items, users)", "build_features": "events", "train": "interactions",
         "train_retrieval": "interactions", "train_ranker": "interactions", "train_ranking": "interactions", "evaluate": "users",
         "refit_retrieval": "interactions", "refit_ranker": "interactions", "refit": "interactions", "register": "models",
         "publish_shard": "users", "publish": "rows", "report": "nights"}


@dataclass
class StepFigures:
    step: str
    processes: int
    started: float   # seconds after the night's first step started
    seconds: float
    peak_rss_mib: float  # the largest of the step's processes
    cpu_seconds: float   # user + system time of its processes
    cores_busy: float    # cpu_seconds / seconds
    unit: str
    count: int
    per_second: float
    floor_seconds: float | None  # the least time its unskippable work takes here (`benchmarks.floors`)
    times_floor: float | None
    floor: str                   # the floor's formula, with this run's numbers


@dataclass
class Outcome:
    results: list[dict]  # each process's printed result
    seconds: float       # wall time, first start to last end
    peak_rss_mib: float  # the largest process's
    cpu_seconds: float   # all its processes', user + system


def run_step(step, common: list[str], config, folder: Path) -> Outcome:
    """Run one step (all its shards at once, if sharded).

    Each process writes its result to a file and its log to steps.log; the peak RSS and CPU time of each are
    read from the kernel's accounting of that child (`wait4`'s rusage; ru_maxrss in KiB on Linux).
    """
    started = time.perf_counter()
    runs = [["--shard", str(shard)] for shard in shards(step, config)] if step.sharded else [[]]
    if threads := step_threads(step, config):  # its share of the cores, as Airflow's task gives it
        runs = [[*run, "--threads", str(threads)] for run in runs]
    processes = []
    with (folder / "steps.log").open("a") as log:
        for index, extra in enumerate(runs):
            command = [sys.executable, "-m", step.module, *common, *extra]
            log.write(f"$ {' '.join(command)}\n")
            log.flush()
            result = folder / f"result-{step.name}-{index}.json"
            with result.open("w") as stdout:
                processes.append((subprocess.Popen(command, stdout=stdout, stderr=log), command, result))
        results, peaks, cpu = [], [], 0.0
        for process, command, result in processes:
            _, status, usage = os.wait4(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)
            if process.returncode:
                raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}); see {folder / 'steps.log'}")
            text = result.read_text()
            results.append(json.loads(text[text.index("{"):]))
            peaks.append(usage.ru_maxrss / 1024)
            cpu += usage.ru_utime + usage.ru_stime
    return Outcome(results, time.perf_counter() - started, max(peaks), cpu)


def count(step: str, results: list[dict], earlier: dict[str, list[dict]]) -> int:
    """How many units of work a step did, from the results the steps printed."""
    first = results[0]
    if step == "validate_raw":  # the day's events and the full item and user snapshots
        return int(sum(first["rows"].values()))
    if step == "build_features":
        return int(sum(first["rows"].get(name, 0) for name in ("interactions", "events")) or sum(first["rows"].values()))
    if step in ("train", "train_retrieval", "train_ranker", "train_ranking", "refit_retrieval", "refit_ranker"):
        return int(earlier["build_features"][0]["rows"].get("interactions", 0))
    if step == "refit":
        return int(first["interactions"])
    if step == "evaluate":
        return int(max(first["users"].values(), default=0))
    if step == "register":
        return len(earlier["evaluate"][0]["metrics"])
    if step == "publish_shard":
        return int(sum(r["users"] for r in results))
    if step == "report":
        return int(first["nights"])
    return int(first.get("rows", 0))


def measure(scale: str, root: Path) -> tuple[list[StepFigures], Rates, float]:
    from configs import load_config

    spec = SCALES[scale]
    folder = root / scale
    raw, var = folder / "raw", folder / "var"
    if not (raw / ".complete").exists():
        started = time.perf_counter()
        generate(spec, raw)
        (raw / ".complete").write_text(f"{time.perf_counter() - started:.1f}s\n")
    # Every run measures the same night, a shop's first: a var dir left by an earlier run holds a champion, and
    # after a change to a recipe's config evaluate would train the champion's old recipe again beside tonight's
    # (at L, 696 s instead of 28 s).
    shutil.rmtree(var, ignore_errors=True)
    overrides = [f"paths.var={var}", f"paths.raw={raw}"]
    config = load_config(None, tuple(overrides))
    common = ["--ds", spec.end.isoformat(), "--run-id", f"bench_{scale}"]
    for override in overrides:
        common += ["--set", override]
    (folder / "steps.log").unlink(missing_ok=True)
    # In a process of its own: a step's peak RSS counts the pages it shares with this process at fork, so
    # TensorFlow and the rate probes' arrays must not live here.
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as probe:
        rates = probe.submit(measure_rates, raw, config, spec.users, spec.items).result()
    print(f"[{scale}] rates on this machine: {rates.as_dict()}", flush=True)
    figures, results = {}, {}
    night = time.perf_counter()

    def done(step, outcome: Outcome, began: float) -> None:
        results[step.name], seconds, peak = outcome.results, outcome.seconds, outcome.peak_rss_mib
        work = count(step.name, results[step.name], results)
        floor, formula = step_floor(step.name, results, config, rates)
        times = None if floor is None else significant(seconds / floor)
        figures[step.name] = StepFigures(step.name, len(results[step.name]), round(began, 1), round(seconds, 1),
                                         round(peak, 0), round(outcome.cpu_seconds, 1),
                                         round(outcome.cpu_seconds / seconds, 2), UNITS[step.name], work,
                                         round(work / seconds, 1),
                                         None if floor is None else significant(floor), times, formula)
        print(f"[{scale}] {step.name}: {seconds:.1f}s from {began:.1f}s, {outcome.cpu_seconds / seconds:.2f} cores busy, "
              f"peak RSS {peak:,.0f} MiB, {work:,} "
              f"{UNITS[step.name]} ({work / seconds:,.0f}/s); floor {'-' if floor is None else f'{floor:.3g}s'} "
              f"({formula})" + (f", {times}x it" if times else ""), flush=True)

    # Every step whose upstream steps are done runs at once, as Airflow's scheduler runs them.
    steps, running, began = topological(), {}, {}
    with ThreadPoolExecutor(len(steps)) as pool:
        while len(figures) < len(steps):
            for step in steps:
                if step.name not in began and all(up in figures for up in step.upstream):
                    print(f"[{scale}] {step.name} ...", flush=True)
                    began[step.name] = time.perf_counter() - night
                    running[pool.submit(run_step, step, common, config, folder)] = step
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                step = running.pop(future)
                done(step, future.result(), began[step.name])
    return [figures[step.name] for step in steps], rates, time.perf_counter() - night


def scaling(root: Path) -> pd.DataFrame | None:
    """Per step, seconds at each measured scale and, for neighbouring scales, the ratio of times beside the
    ratio of work done (the step's own unit): a step scales linearly where the two are alike."""
    measured = {scale: pd.DataFrame(json.loads((root / f"{scale}.json").read_text())["steps"]).set_index("step")
                for scale in SCALES if (root / f"{scale}.json").exists()}
    if len(measured) < 2:
        return None
    table = pd.DataFrame({f"seconds {scale}": frame["seconds"] for scale, frame in measured.items()})
    names = list(measured)
    for smaller, larger in zip(names, names[1:], strict=False):
        table[f"time({larger})/time({smaller})"] = (table[f"seconds {larger}"] / table[f"seconds {smaller}"]).round(2)
        table[f"work({larger})/work({smaller})"] = (measured[larger]["count"] / measured[smaller]["count"]).round(2)
    return table


def main(scale: Annotated[str, typer.Option(help="S, M or L.")] = "S",
         out: Annotated[Path, typer.Option(help="Folder for data, results and tables.")] = Path("var/bench")) -> None:
    if scale not in SCALES:
        raise typer.BadParameter(f"scale must be one of {', '.join(SCALES)}")
    spec = SCALES[scale]
    started = time.perf_counter()
    figures, rates, night = measure(scale, out)
    total = time.perf_counter() - started
    table = pd.DataFrame([asdict(f) for f in figures])
    setup = {"scale": scale, "events": spec.events, "users": spec.users, "items": spec.items, "days": spec.days,
             "cpus": os.cpu_count(), "night_seconds": round(night, 1),
             "steps_seconds": round(sum(f.seconds for f in figures), 1),
             "cpu_seconds": round(sum(f.cpu_seconds for f in figures), 1),
             "night_bound_seconds": round(sum(f.cpu_seconds for f in figures) / os.cpu_count(), 1),
             "total_seconds": round(total, 1),
             "rates": rates.as_dict()}
    (out / f"{scale}.json").write_text(json.dumps({"setup": setup, "steps": [asdict(f) for f in figures]}, indent=2))
    (out / f"{scale}.md").write_text(f"{setup}\n\n{table.to_markdown(index=False)}\n")
    print(f"\n{setup}\n\n{table.to_markdown(index=False)}")
    ratios = scaling(out)
    if ratios is not None:
        (out / "scaling.md").write_text(ratios.to_markdown() + "\n")
        print("\n" + ratios.to_markdown())


if __name__ == "__main__":
    typer.run(main)

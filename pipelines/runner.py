"""Run the nightly pipeline's steps in order, in this process, without Airflow."""

from __future__ import annotations

import importlib
import logging
import time
from datetime import date

from configs.schema import Config
from pipelines.nightly import STEPS, Step, side_by_side, topological

log = logging.getLogger(__name__)


def find_step(step: Step | str) -> Step:
    """A step of the nightly or the tuning pipeline, by name."""
    from pipelines.tuning import STEPS as TUNING_STEPS

    return step if isinstance(step, Step) else next(s for s in (*STEPS, *TUNING_STEPS) if s.name == step)


def shards(step: Step | str, config: Config) -> list[int]:
    """The shard indices a sharded step runs for with this config."""
    return list(range(importlib.import_module(find_step(step).module).shard_count(config)))


def step_threads(step: Step | str, config: Config) -> int | None:
    """The threads a step's process computes on (`use_threads`), or None for every core of its host: a shard its
    share among the shards (the step's `shard_threads`); a compute step that Airflow may run beside others on
    one host (`side_by_side`; not in pods of their own) its share of the host's cores among them."""
    from tasks.models.compute_threads import shared_cores

    step = find_step(step)
    if step.sharded:
        return importlib.import_module(step.module).shard_threads(config)
    beside = side_by_side(step)
    return shared_cores(len(beside)) if len(beside) > 1 and config.execution.mode != "kubernetes_pod" else None


def run_step(step: Step | str, config: Config, ds: date, run_id: str, shard: int | None = None) -> dict:
    """Run one step's entry point (for one shard, if it is sharded); its typed result comes back as JSON-ready
    data (what XCom carries)."""
    step = find_step(step)
    if step.sharded != (shard is not None):
        raise ValueError(f"step {step.name} {'needs' if step.sharded else 'takes no'} shard")
    extra = {"shard": shard} if step.sharded else {}
    result = importlib.import_module(step.module).run(config, ds, run_id, **extra)
    return result.model_dump(mode="json")


def run_pipeline(config: Config, ds: date, run_id: str) -> dict[str, dict]:
    """Run every step for ds; stops at the first failure, so nothing after a failed step changes."""
    results, timings = {}, {}
    for step in topological():
        started = time.perf_counter()
        log.info("step %s ds=%s: starting", step.name, ds)
        if step.sharded:  # one after another here; Airflow runs them as parallel mapped tasks
            results[step.name] = [run_step(step, config, ds, run_id, shard) for shard in shards(step, config)]
        else:
            results[step.name] = run_step(step, config, ds, run_id)
        timings[step.name] = time.perf_counter() - started
        log.info("step %s ds=%s: done in %.1fs", step.name, ds, timings[step.name])
    log.info("pipeline ds=%s done in %.1fs: %s", ds, sum(timings.values()),
             ", ".join(f"{name} {seconds:.1f}s" for name, seconds in timings.items()))
    return results

from datetime import UTC, date, datetime

import pytest

from pipelines.nightly import STEPS, Step, data_date, knob_overrides, side_by_side, topological
from tasks.errors import DataContractError, InvalidParameter


def test_scheduled_run_processes_the_previous_day():
    assert data_date(datetime(2026, 11, 24, 2, 0, tzinfo=UTC)) == date(2026, 11, 23)


def test_explicit_ds_wins():
    assert data_date(datetime(2026, 11, 24, 2, 0, tzinfo=UTC), "2026-10-01") == date(2026, 10, 1)


def test_a_malformed_ds_parameter_is_an_input_error_naming_it():
    with pytest.raises(InvalidParameter, match="the run's ds parameter: '2026-13-45' is not a day in the format YYYY"):
        data_date(datetime(2026, 11, 24, 2, 0, tzinfo=UTC), "2026-13-45")
    assert issubclass(InvalidParameter, DataContractError)  # what the Airflow task fails at once, no retry


def test_knobs_become_overrides_and_unset_knobs_keep_the_config():
    assert knob_overrides({"k": 50, "lookback_days": None, "models": ["popularity"]}) == [
        "publish.k=50", 'train.models=["popularity"]']


def test_steps_run_in_dependency_order():
    order = [s.name for s in topological()]
    assert order == ["validate_raw", "build_features", "train", "train_retrieval", "train_ranker", "train_ranking",
                     "evaluate", "refit_retrieval", "refit_ranker", "refit", "register", "publish_shard", "publish",
                     "report"]
    assert len(order) == len(STEPS)


def test_compute_steps_airflow_may_run_at_once_share_the_hosts_cores():
    """train_retrieval and train_ranker follow build_features alone: Airflow runs them side by side, and on one
    host each computes on its share of the cores; in pods of their own, or with nothing beside, on all of them.
    refit_retrieval follows both: it runs beside short steps only, on every core."""
    import os

    from configs import load_config
    from pipelines.runner import step_threads

    steps = {step.name: step for step in STEPS}
    assert side_by_side(steps["train_retrieval"]) == side_by_side(steps["train_ranker"]) == ("train_retrieval", "train_ranker")
    assert side_by_side(steps["refit_retrieval"]) == ("refit_retrieval",)
    assert side_by_side(steps["evaluate"]) == ()
    chain = (Step("a", (), compute=True), Step("b", ("a",), compute=True), Step("c", ("a",), compute=True),
             Step("d", ("b",), compute=True))
    assert side_by_side(chain[0], chain) == ("a",) and side_by_side(chain[1], chain) == ("b", "c")
    assert side_by_side(chain[3], chain) == ("c", "d")
    config = load_config(None)
    assert step_threads("train_retrieval", config) == step_threads("train_ranker", config) == max(1, (os.cpu_count() or 1) // 2)
    assert step_threads("refit_retrieval", config) is None
    assert step_threads("evaluate", config) is None and step_threads("train_ranking", config) is None
    assert step_threads("train_retrieval", load_config(None, ["execution.mode=kubernetes_pod"])) is None


def test_cycles_and_unknown_upstreams_are_rejected():
    with pytest.raises(ValueError, match="cycle"):
        topological((Step("a", ("b",)), Step("b", ("a",))))
    with pytest.raises(ValueError, match="unknown step"):
        topological((Step("a", ("nope",)),))


def test_task_processes_quiet_the_libraries_but_an_explicit_setting_wins(monkeypatch):
    import logging
    import os

    from tasks.step_cli import quiet_libraries

    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    quiet_libraries()
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] in ("2", "3")  # 3 where no NVIDIA driver would answer its probes
    assert logging.getLogger("great_expectations").level == logging.WARNING
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    quiet_libraries()
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"

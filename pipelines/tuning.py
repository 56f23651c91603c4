"""The weekly tuning pipeline as data: build the features of ds, then search the TFRS knobs (`tasks.tune`).

Its result is a config overlay (`tune.overlay`, default `<var>/tuning/tuned.yaml`) that the nightly DAG reads
when neither the Airflow Variable `recsys_config` nor `RECSYS_CONFIG` names a config.
"""

from __future__ import annotations

from pipelines.nightly import Knob, Step

DAG_ID = "recsys_tune"
SCHEDULE = "0 4 * * 0"  # Sundays 04:00 UTC, after that night's nightly run

STEPS: tuple[Step, ...] = (
    Step("build_features", ()),
    Step("tune", ("build_features",)),
)

KNOBS: dict[str, Knob] = {
    "trials": Knob("tune.trials", "integer", "Most trials of the search."),
    "minutes": Knob("tune.minutes", "number", "Time budget of the search, in minutes."),
}

"""The feature set's order of events: by event_ts, then event_id, whichever way the rows arrive."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tasks.storage.feature_set import in_time_order


@pytest.mark.parametrize("descending", [False, True])
@pytest.mark.parametrize("presorted", [True, False])
def test_in_time_order_is_pandas_stable_sort_whether_or_not_the_rows_come_sorted(presorted, descending):
    rng = np.random.default_rng(5)
    events = pd.DataFrame({"event_ts": pd.to_datetime(rng.integers(0, 4, 60), unit="s", utc=True),
                           "event_id": pd.array([f"e{i}" for i in rng.integers(0, 50, 60)], dtype="str"),
                           "row": range(60)})
    if presorted:  # ascending, as build_features writes them; repeated (ts, id) pairs stay in
        events = events.sort_values(["event_ts", "event_id"], kind="stable", ignore_index=True)

    def expected(frame: pd.DataFrame) -> list[int]:
        return frame.sort_values(["event_ts", "event_id"], ascending=not descending, kind="stable")["row"].tolist()

    assert in_time_order(events, descending)["row"].tolist() == expected(events)
    unique = events.drop_duplicates(["event_ts", "event_id"])  # strictly ascending when presorted: no sort
    assert in_time_order(unique, descending)["row"].tolist() == expected(unique)
    with_gaps = events.assign(event_id=events["event_id"].where(events["row"] % 7 != 0))  # missing ids go last
    assert in_time_order(with_gaps, descending)["row"].tolist() == expected(with_gaps)

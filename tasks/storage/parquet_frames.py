"""Frames to Parquet, Arrow list columns included, in the shape `pd.read_parquet` reads back."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


def write_frame(frame: pd.DataFrame, path: Path) -> None:
    """`frame.to_parquet(path, index=False)`, except that an Arrow-backed list column (built by Arrow, with no
    Python list per row) is described to pandas as the object column a column of Python lists was: pandas
    records it as `list<item: string>[pyarrow]`, a name its reader cannot parse back, so every reader of the
    file would fail. Readers get what they always got, a numpy array per cell."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    described = json.loads(table.schema.metadata[b"pandas"])
    for column in described["columns"]:
        if isinstance(frame.dtypes.get(column["name"]), pd.ArrowDtype) and column["pandas_type"].startswith("list"):
            column["numpy_type"] = "object"
    table = table.replace_schema_metadata({**table.schema.metadata, b"pandas": json.dumps(described).encode()})
    pq.write_table(table, path, compression="snappy")

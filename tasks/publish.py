"""publish: commit every staged shard of the run as the ds partition, in one transaction, or nothing.

`publish_shard` tasks score the users shard by shard; this step checks that all of them are there and come
from one model version, then swaps them in: the lake folder atomically, the warehouse table inside one
DuckDB transaction (which rejects a user ranked twice). Until then readers keep yesterday's rows.
"""

from __future__ import annotations

import logging
import shutil
import time
from datetime import UTC, date, datetime

import duckdb
from pydantic import BaseModel

from configs.schema import Config
from tasks.address_book import AddressBook
from tasks.atomic_write import atomic_directory
from tasks.errors import MissingInput, RecommendationsInvalid
from tasks.publish_shard import shard_count, shard_file
from tasks.step_cli import step_main
from tasks.warehouse import DuckDBWarehouse

log = logging.getLogger(__name__)


class PublishResult(BaseModel):
    ds: date
    model_name: str
    model_version: str
    shards: int
    users: int
    rows: int
    table: str
    parquet: str


def publish(config: Config, ds: date, run_id: str) -> PublishResult:
    """Replace the ds partition of the lake and the warehouse with this run's shards."""
    started = time.perf_counter()
    book = AddressBook.from_config(config)
    staging, shards = book.publish_staging(ds, run_id), shard_count(config)
    files = [staging / shard_file(shard, shards) for shard in range(shards)]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise MissingInput(f"recommendations ds={ds}: {len(missing)} of {shards} shards missing under {staging} "
                           f"({', '.join(missing[:3])}): run publish_shard for them first")
    models = duckdb.sql("SELECT DISTINCT model_name, model_version FROM read_parquet($files)",
                        params={"files": [str(f) for f in files]}).fetchall()
    if len(models) != 1:
        raise RecommendationsInvalid(f"recommendations ds={ds} not published: the shards come from more than one "
                                     f"model {sorted(models)}; rerun publish_shard for all of them")
    (model_name, model_version), = models
    warehouse_path = config.publish.warehouse or book.warehouse
    # The table's transaction runs inside the lake folder's swap: if it fails, the new folder is dropped too.
    with atomic_directory(book.recommendations(ds)) as lake:
        for f in files:
            shutil.copyfile(f, lake / f.name)
        rows, users = DuckDBWarehouse(warehouse_path).replace_partition(
            ds, files, model_name, model_version, datetime.now(UTC).replace(tzinfo=None))
    shutil.rmtree(staging, ignore_errors=True)
    log.info("publish ds=%s: %d rows for %d users in %d shards from %s v%s in %.1fs -> %s (recommendations) and %s",
             ds, rows, users, shards, model_name, model_version, time.perf_counter() - started, warehouse_path,
             book.recommendations(ds))
    return PublishResult(ds=ds, model_name=model_name, model_version=model_version, shards=shards, users=users,
                         rows=rows, table=str(warehouse_path), parquet=str(book.recommendations(ds)))


run = publish

if __name__ == "__main__":
    step_main(publish)

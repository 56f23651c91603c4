"""publish: commit every staged shard of the run as the ds partition, in one transaction, or nothing.

`publish_shard` tasks score the users shard by shard; this step checks that all of them are there and come
from one model version, then commits them: first the warehouse table, inside one transaction (which
rejects a user ranked twice), the night's commit point; then the lake folder, exchanged whole in one atomic
rename. Until then readers keep the previous rows. A crash between the two leaves the lake a whole night
behind, and the next run of the ds rebuilds it from the warehouse before anything else (`tasks.storage.lake`
has the order and the reasons). A successful publish sweeps the ds's leftovers of killed or failed runs.
"""

from __future__ import annotations

import logging
import shutil
import time
from datetime import UTC, date, datetime

import duckdb
from pydantic import BaseModel

from configs.schema import Config
from tasks.errors import MissingInput, RecommendationsInvalid
from tasks.fault_points import fault_point
from tasks.publish_shard import shard_file
from tasks.step_cli import step_main
from tasks.storage.address_book import AddressBook
from tasks.storage.atomic_write import atomic_directory
from tasks.storage.lake import publication_token, reconcile_recommendations, sweep_leftovers, write_marker
from tasks.storage.warehouse import warehouse_for

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
    warehouse = warehouse_for(config, book)
    agreement = reconcile_recommendations(book, warehouse, ds)  # a crash of an earlier try is mended first
    staging, shards = book.publish_staging(ds, run_id), config.publish.shards
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
    generated_at = datetime.now(UTC).replace(tzinfo=None)
    # The table's transaction runs inside the lake folder's swap: if it fails, the new folder is dropped too.
    with atomic_directory(book.recommendations(ds)) as lake:
        for f in files:  # named after the publication: a reader that spans a swap fails instead of mixing nights
            shutil.copyfile(f, lake / f"{f.stem}-{publication_token(generated_at)}.parquet")
        rows, users = warehouse.replace_partition(ds, files, model_name, model_version, generated_at)
        fault_point("publish.after_warehouse_commit")
        write_marker(lake, {"ds": ds, "model_name": model_name, "model_version": model_version, "users": users,
                            "rows": rows, "generated_at": generated_at, "run_id": run_id})
    fault_point("publish.after_lake_swap")
    removed = sweep_leftovers(book, ds)
    log.info("publish ds=%s: %d rows for %d users in %d shards from %s v%s in %.1fs -> %s (recommendations) and %s; "
             "lake before: %s; %d leftovers of earlier runs removed", ds, rows, users, shards, model_name,
             model_version, time.perf_counter() - started, warehouse.location, book.recommendations(ds), agreement,
             len(removed))
    return PublishResult(ds=ds, model_name=model_name, model_version=model_version, shards=shards, users=users,
                         rows=rows, table=warehouse.location, parquet=str(book.recommendations(ds)))


run = publish

if __name__ == "__main__":
    step_main(publish)

"""The lake's recommendations folder and its agreement with the warehouse; the sweep of a ds's leftovers.

Order of commits when a night is published (`tasks.publish`), and why:
1. the night's files are staged beside `lake/recommendations/ds=D/`;
2. the warehouse transaction commits: the night's single commit point;
3. a marker naming that publication joins the staged files, and the folder is exchanged with the old one in
   one atomic rename (`atomic_write.swap_in`).
A crash before 2 changes nothing. A crash after 2 leaves the lake one night behind: whole, never mixed and
never absent. The next run of that ds (`validate_raw` or `publish`, before anything else) sees that the
folder's marker does not name the warehouse's publication and rebuilds the folder from the warehouse's rows.

Readers glob `lake/recommendations/ds=D/*.parquet` (Spark, DuckDB, pandas); the marker `_publication.json`
follows the `_SUCCESS` convention that Spark and pyarrow skip. File names carry the publication's time, so a
reader that lists the folder before a swap and opens the files after it fails loudly instead of mixing nights.
"""

from __future__ import annotations

import json
import logging
import shutil
import uuid
from datetime import date
from pathlib import Path

from tasks.storage.address_book import AddressBook
from tasks.storage.atomic_write import RETIRED, STAGING, atomic_directory, leftovers
from tasks.storage.warehouse import Warehouse

log = logging.getLogger(__name__)

MARKER = "_publication.json"


def publication_token(generated_at) -> str:
    """What the file names of one publication carry, so that no two nights share a file name."""
    return generated_at.strftime("%Y%m%dT%H%M%S%f")


def write_marker(folder: Path, publication: dict) -> None:
    (folder / MARKER).write_text(json.dumps(publication, indent=2, default=str))


def read_marker(folder: Path) -> dict | None:
    path = folder / MARKER
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None


def _same(marker: dict | None, publication: dict) -> bool:
    return marker is not None and all(str(marker.get(k)) == str(publication[k])
                                      for k in ("model_version", "generated_at"))


def reconcile_recommendations(book: AddressBook, warehouse: Warehouse, ds: date) -> str:
    """Bring `lake/recommendations/ds=D/` into agreement with the warehouse's publication of ds; returns what
    it found or did, in words."""
    folder = book.recommendations(ds)
    publication = warehouse.publication(ds)
    if publication is None:
        if folder.is_dir():  # a night the warehouse never committed (a copy, an older release): not served
            retired = folder.parent / f"{RETIRED}{folder.name}-unpublished-{uuid.uuid4().hex[:8]}"
            folder.rename(retired)
            shutil.rmtree(retired, ignore_errors=True)
            log.warning("lake: removed %s: the warehouse has no publication of ds=%s", folder, ds)
            return "removed: not in the warehouse"
        return "nothing published"
    if _same(read_marker(folder), publication):
        return "in agreement"
    with atomic_directory(folder) as staging:
        warehouse.export_partition(ds, staging / f"part-from-warehouse-{publication_token(publication['generated_at'])}"
                                                 ".parquet")
        write_marker(staging, publication)
    log.warning("lake: %s did not match the warehouse's publication of ds=%s (%s v%s at %s): rebuilt from its %s "
                "rows", folder, ds, publication["model_name"], publication["model_version"],
                publication["generated_at"], publication["rows"])
    return "rebuilt from the warehouse"


def sweep_leftovers(book: AddressBook, ds: date) -> list[Path]:
    """Remove what killed or failed runs of ds left: staging and swapped-out folders beside each of the ds's
    outputs, and every run's staged publish shards (`.partial` files included). Returns what it removed."""
    finals = [book.features(ds), book.models(ds), book.evaluation(ds), book.recommendations(ds)]
    found = [p for final in finals for p in leftovers(final)]
    if book.models(ds).is_dir():
        found += [p for p in book.models(ds).iterdir() if p.name.startswith((STAGING, RETIRED))]
    shards = book.publish_staging(ds, "any").parent
    if shards.is_dir():
        found.append(shards)
    removed = []
    for path in found:
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        removed.append(path)
        log.info("lake: removed leftover %s (%.1f MB)", path, size / 1e6)
    return removed

"""The Spark session of `engine: spark`: `local[N]` in this process by default, a Spark Connect server
(`sc://host:15002`) in production. Made once per process; every time it reads and writes is UTC."""

from __future__ import annotations

import functools
import logging
import os
import sys

from configs.schema import SparkConfig

log = logging.getLogger(__name__)


@functools.cache
def spark_session(config: SparkConfig):
    """The session for `config` (pydantic config objects are frozen, so it is cached by value)."""
    # Spark's Python workers must be this interpreter (the venv's, with pyarrow); its driver binds loopback.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    # py4j logs every connection it opens and closes, the last at interpreter exit, after logging has closed.
    logging.getLogger("py4j").setLevel(logging.WARNING)
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName("recsys-nightly")
    if config.remote:  # a server's own settings (memory, UI) are its operator's; the session's are ours
        builder = builder.remote(config.remote)
    else:
        builder = builder.master(config.master).config("spark.driver.memory", config.driver_memory).config(
            "spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")  # bars garble task logs
    settings = {
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",  # not INT96: pandas and DuckDB read it as is
        "spark.sql.shuffle.partitions": str(config.shuffle_partitions),
        "spark.sql.execution.arrow.pyspark.enabled": "true",
    }
    for key, value in settings.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    if not config.remote:
        session.sparkContext.setLogLevel("ERROR")
    log.info("spark: %s (Spark %s)", config.remote or config.master, session.version)
    return session

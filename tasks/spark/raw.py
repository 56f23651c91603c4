"""The raw landing zone read by Spark: Parquet partitions as DataFrames, each file's footer checked first."""

from __future__ import annotations

from datetime import date

from configs.schema import SparkConfig
from tasks.spark.session import spark_session
from tasks.storage.raw_store import RawStore, check_readable


def read_parquet_partitions(spark, raw: RawStore, table: str, days: list[date], with_ds: bool = True):
    """The raw partitions of `days` that exist (with their `ds`, unless told not); CSV partitions are the pandas
    engine's."""
    from pyspark.sql import functions as F

    frames = []
    for day in days:
        files = raw.partition_files(table, day)
        if not files:
            continue
        if any(p.suffix != ".parquet" for p in files):
            raise NotImplementedError(f"engine: spark reads Parquet raw partitions; {table} ds={day} has CSV "
                                      f"files ({', '.join(map(str, files))}): use engine: pandas")
        for path in files:  # a partition landed again under the same file names must not be read from cache
            spark.catalog.refreshByPath(str(path))
        frame = spark.read.parquet(*map(str, files))
        frames.append(frame.withColumn("ds", F.lit(day)) if with_ds else frame)
    if not frames:
        return None
    result = frames[0]
    for frame in frames[1:]:
        result = result.unionByName(frame, allowMissingColumns=True)
    return result


def read_day(config: SparkConfig, raw: RawStore, ds: date, tables: tuple[str, ...]) -> dict:
    """The day's partitions of `tables` as Spark DataFrames for validate_raw. A file that cannot be read is
    named, as the pandas engine names it. NaN in a float column reads as null, as pandas counts it: a missing
    value, for the not-null rule to judge."""
    from pyspark.sql import functions as F

    spark = spark_session(config)
    frames = {}
    for table in tables:
        for path in raw.partition_files(table, ds):
            check_readable(path, f"{table} ds={ds}")
        frame = read_parquet_partitions(spark, raw, table, [ds], with_ds=False)
        floats = {f.name for f in frame.schema.fields if f.dataType.typeName() in ("double", "float")}
        frames[table] = frame.select(*[F.nanvl(F.col(c), F.lit(None)).alias(c) if c in floats else F.col(c)
                                       for c in frame.columns])
    return frames

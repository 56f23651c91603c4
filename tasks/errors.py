"""Errors that mean the input (data or a run's parameters), not the code or the infrastructure, is wrong:
retrying will not help. Each says what to do about it (`remedy`), which the Airflow task and the command line
print under the error."""


class DataContractError(Exception):
    """Input data breaks the contract; the run stops and nothing downstream changes."""

    remedy = "Fix the input named above, then clear this task; yesterday's tables stay served meanwhile."


class RawDataInvalid(DataContractError):
    """A raw partition failed its Great Expectations suite."""

    remedy = ("Open the report named above for the failing rows; fix them at the source and land the partition "
              "again (or widen the rule in the config if the data is right), then clear this task. Nothing "
              "downstream changed: yesterday's tables stay served.")


class RawDataUnreadable(DataContractError):
    """A raw file is corrupt or malformed (not Parquet, a ragged CSV line): the message names the file."""

    remedy = ("Land the named file again from its source (it is corrupt or cut short), then clear this task. "
              "Nothing downstream changed.")


class InvalidParameter(DataContractError):
    """A run's parameter is malformed (a ds that is not a date, say): the message names the parameter."""

    remedy = "Trigger a new run with the parameter corrected; this run changed nothing."


class FeaturesInvalid(DataContractError):
    """The built features failed their suite; the partition was not published."""

    remedy = ("The raw data passed its checks but the features built from it did not: look at the named rule "
              "and the raw partitions of the lookback window, fix them, then clear build_features. No features "
              "were published.")


class RecommendationsInvalid(DataContractError):
    """The recommendations failed the pre-commit checks; the table was left as it was."""

    remedy = ("The new lists were not published and yesterday's stay served. Check the model version named "
              "above in MLflow; clear publish_shard once it is fixed, or roll the `champion` alias back.")


class MissingInput(DataContractError):
    """An upstream partition or model that a step needs does not exist."""

    remedy = ("Land the named partition, or run the step that writes the named path (clear it in Airflow), then "
              "clear this task.")


class IncompatibleModel(DataContractError):
    """A saved model was written in a format this code no longer reads (an older release's champion, say)."""

    remedy = ("Retrain with this code: a nightly run trains and registers a new version; until then move the "
              "`champion` alias to a version this code reads.")


def describe(error: DataContractError) -> str:
    """The error for a person: its kind, what went wrong, and what to do."""
    return f"{type(error).__name__}: {error}\nWhat to do: {error.remedy}"

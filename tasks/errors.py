"""Errors that mean the input (data or a run's parameters), not the code or the infrastructure, is wrong:
retrying will not help."""


class DataContractError(Exception):
    """Input data breaks the contract; the run stops and nothing downstream changes."""


class RawDataInvalid(DataContractError):
    """A raw partition failed its Great Expectations suite."""


class RawDataUnreadable(DataContractError):
    """A raw file is corrupt or malformed (not Parquet, a ragged CSV line): the message names the file."""


class InvalidParameter(DataContractError):
    """A run's parameter is malformed (a ds that is not a date, say): the message names the parameter."""


class FeaturesInvalid(DataContractError):
    """The built features failed their suite; the partition was not published."""


class RecommendationsInvalid(DataContractError):
    """The recommendations failed the pre-commit checks; the table was left as it was."""


class MissingInput(DataContractError):
    """An upstream partition or model that a step needs does not exist."""


class IncompatibleModel(DataContractError):
    """A saved model was written in a format this code no longer reads (an older release's champion, say)."""

"""Errors a user can fix: each message names the problem and what to do."""


class UserError(Exception):
    """A problem in the user's input or environment, reported without a traceback."""


class ConfigError(UserError):
    """params.yaml is invalid."""


class FetchError(UserError):
    """No mirror delivered a file with the pinned checksum."""


class DataError(UserError):
    """A local data file is corrupt or inconsistent."""


class TrackingError(UserError):
    """The MLflow tracking store cannot be used."""

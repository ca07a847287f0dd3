"""The one base class of every error that reports a bad input (config, data, plugin, run
directory). The CLI prints its message, which names the file, key, row or plugin, and exits."""


class SpurcoreError(Exception):
    exit_code = 1


class ConfigError(SpurcoreError, ValueError):
    """A bad pipeline file, option or override; the message names where."""

    exit_code = 2


class DataError(SpurcoreError, ValueError):
    """A dataset that does not meet the contract; the message names the split and row."""


class StorageError(SpurcoreError):
    """A file or folder that cannot be written: read-only to the user, or the disk full; the
    message names the path and what to do (`spurcore.atomic.storage_message`)."""

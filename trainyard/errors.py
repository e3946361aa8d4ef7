"""Exceptions raised by trainyard core; each message names the problem and the fix."""


class TrainyardError(Exception):
    """Base class for every error trainyard reports to a user."""

    exit_code = 1


class ConfigError(TrainyardError):
    """A setting is missing, malformed or contradicts another setting."""

    exit_code = 2


class StoreError(TrainyardError):
    """The store could not be read or written."""


class NotFound(TrainyardError):
    """A repo, commit, blob or model does not exist."""

    exit_code = 3


class AmbiguousId(TrainyardError):
    """A short id matches more than one object."""

    exit_code = 3


class CorruptBlob(StoreError):
    """A downloaded blob does not match its sha256."""


class ConflictError(StoreError):
    """A branch moved under us more times than we were willing to retry."""


class BundleError(TrainyardError):
    """A source or data bundle is not laid out as the training contract requires."""

    exit_code = 2


class ResourceError(TrainyardError):
    """A cpu, memory or gpu request is malformed or above the configured maximum."""

    exit_code = 2


class StepError(TrainyardError):
    """A pipeline step failed."""

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

    exit_code = 7


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


# -- infrastructure: each has its own exit code (README "Exit codes") ----------------------------------------------
class StoreUnavailable(StoreError):
    """The store's endpoint cannot be reached, or stopped answering within the configured timeouts and retries."""

    exit_code = 5


class CredentialsRefused(StoreError):
    """The store refused the credentials it was given (or was given none)."""

    exit_code = 4


class StoreMissing(NotFound):
    """The store itself does not exist: a bucket that is missing, or a file:// path that does not."""


class StoreNotWritable(StoreError):
    """The store cannot be written: the disk is full, or the store is read-only."""

    exit_code = 6


class DamageFound(StoreError):
    """`trainyard fsck` found blobs or references that are damaged or missing."""

    exit_code = 7

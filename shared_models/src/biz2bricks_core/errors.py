"""Exceptions of biz2bricks-core: one root, split into transient and permanent failures."""

from __future__ import annotations


class Biz2BricksError(Exception):
    """Root of every exception raised by biz2bricks-core."""


class ConfigurationError(Biz2BricksError, ValueError):
    """A setting is missing or malformed; the message names the environment variable."""


class SchemaOutdatedError(ConfigurationError):
    """The database's schema is older than this release needs; the message says how to migrate."""


class TransientError(Biz2BricksError):
    """A failure that may succeed when retried (database unreachable, connection dropped)."""


class DatabaseUnavailableError(TransientError):
    """The database did not answer; the message says which one and how to start it."""


class DatabaseAccessError(DatabaseUnavailableError):
    """The server answered but refused the database, role or password; the message names the fix."""


class PermanentError(Biz2BricksError):
    """A failure that retrying cannot fix (bad input, unknown organization)."""


class InvalidEventError(PermanentError, ValueError):
    """A usage event violates wire format v1; ``reason`` names the field."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UnknownOrganizationError(PermanentError, LookupError):
    """The organization has no ``usage_limits`` row (it was never provisioned)."""


class UnknownPlanError(PermanentError, LookupError):
    """The subscription plan does not exist in ``subscription_plans``."""


class InvalidArgumentError(PermanentError, ValueError):
    """An argument to a UsageService call is out of range (negative size, non-UUID id)."""


class UnknownGrantError(PermanentError, LookupError):
    """No credit grant has this id."""


class GrantConflictError(PermanentError, ValueError):
    """A grant_id is reused with other values than the grant it names (the message says which)."""


class UnknownEventError(PermanentError, LookupError):
    """No stored usage event has this id (it never arrived, or it was archived)."""

"""Errors that carry a message meant for a person: the CLI prints them as one line."""

from __future__ import annotations


class MlclError(Exception):
    """Base class of every error the project raises on purpose (bad input, bad config)."""


class DataError(MlclError):
    """A data set on disk is missing, malformed or inconsistent. The message names the file."""


class ConfigError(MlclError):
    """A configuration key is unknown or has a value of the wrong type. The message names the key."""


class CheckpointError(MlclError):
    """A checkpoint cannot be used: missing, corrupt, or made for another method or label set."""


class UsageError(MlclError):
    """An argument is out of range or conflicts with another (``threshold`` with ``top_k``)."""

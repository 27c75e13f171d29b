"""The project's user-facing errors: one base class, one kind per source of trouble.

Anything a user can cause (a bad data folder, a missing asset, checkpoints that do not fit,
bad input in the app) raises a :class:`CoLLMError`. The CLI prints its message on one line
and exits with status 2; the app shows it as ``gr.Error``. Everything else is a bug and keeps
its traceback.
"""

from __future__ import annotations


class CoLLMError(ValueError):
    """A problem the user can fix; the message says what and where."""


class DataError(CoLLMError):
    """A data folder or file that cannot be read as MovieLens / CSV interactions."""


class AssetError(CoLLMError):
    """An embedded asset that cannot be fetched, verified or converted."""


class CheckpointError(CoLLMError):
    """Checkpoints that are missing a needed part or do not fit the running LLM, CF model or each other."""


class InputError(CoLLMError):
    """Bad input to the app or the API (ids, tables, options)."""

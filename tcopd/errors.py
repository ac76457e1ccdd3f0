"""One error family for everything a user can get wrong.

The CLI turns a ``TcopdError`` into a single ``error: ...`` line on stderr and a non-zero exit;
the traceback is shown only with ``TCOPD_DEBUG=1``. The message must say what was wrong *and*
what to do about it.
"""

from __future__ import annotations


class TcopdError(Exception):
    """A mistake in input, configuration or environment that the user can fix."""

    exit_code: int = 1


class ConfigError(TcopdError):
    """Bad configuration: unknown key, wrong type, inconsistent settings."""


class DataError(TcopdError):
    """Bad input data: missing fields, malformed rows, empty results."""


class ModelError(TcopdError):
    """A model or tokenizer that cannot be used (missing, not a causal LM, mismatched)."""


class TrainingError(TcopdError):
    """A training run that must stop (non-finite loss, conflicting resume)."""

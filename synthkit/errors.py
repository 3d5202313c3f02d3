"""The errors synthkit raises for bad input: each names the problem in one line.

Every user-facing error derives from :class:`SynthkitError`; the command line prints its message as one
line and exits with code 2. Anything else escaping is a bug in synthkit, and is shown as one.
This module imports nothing of synthkit, so every layer can raise these.
"""

from __future__ import annotations


class SynthkitError(Exception):
    """Bad input or an unusable environment; the message says what and where, in one line."""


class ConfigError(SynthkitError, ValueError):
    """A pipeline file or override is malformed; the message names the key."""


class RunError(SynthkitError, RuntimeError):
    """A run directory cannot be used as asked (exists already, config mismatch on resume, ...)."""


class CheckpointError(SynthkitError, RuntimeError):
    """A checkpoint or a run's published weights are missing, truncated, corrupt or of another run."""


class ExportError(SynthkitError, RuntimeError):
    """An export cannot run as asked (no generator in the run, a different set in the way, ...)."""


class DataSourceError(SynthkitError, ValueError):
    """A data source is missing, incomplete or unreadable; the message says which file and what to do."""


class ShardError(SynthkitError):
    """A shard set cannot be written, read or trusted; the message names the file and the reason."""


class ShardSetExistsError(ShardError):
    """The output directory already holds a shard set; we never overwrite or mix two sets."""


class AuditError(SynthkitError, ValueError):
    """The inputs of an audit are unusable (empty set, mixed image sizes, too few samples, ...)."""


class ExtractorError(SynthkitError, ValueError):
    """A feature extractor cannot be built (missing weights, wrong kind, ...)."""


class OutputError(SynthkitError, RuntimeError):
    """An output cannot be written (disk full, permission, not a directory); nothing half-written stays."""


class ModelError(SynthkitError, ValueError):
    """A model given as input (a pretrained diffusion model, a user's generator, encoder weights) is
    missing, malformed, or does not fit the data."""

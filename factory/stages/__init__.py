"""Built-in stage kinds. Importing this package registers them."""

from factory.stages import correct, prune  # noqa: F401

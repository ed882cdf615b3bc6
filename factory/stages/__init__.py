"""Built-in stage kinds. Importing this package registers them."""

from factory.stages import correct  # noqa: F401

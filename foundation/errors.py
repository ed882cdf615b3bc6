"""User-facing errors: one line, no traceback, non-zero exit."""


class FactoryError(Exception):
    """An error caused by the user's input (recipe, data, model, arguments).

    The CLI prints ``str(err)`` as a single line and exits with status 2; the
    message must say what is wrong and where (file, YAML path, line)."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class ConfigError(FactoryError):
    """A recipe or config value is invalid; ``where`` is the YAML path."""

    def __init__(self, where: str, message: str, file: str | None = None):
        self.where = where
        self.file = file
        self.message = message
        prefix = f"{file}: " if file else ""
        loc = f"{where}: " if where else ""
        super().__init__(f"{prefix}{loc}{message}")

    def in_file(self, file: str) -> "ConfigError":
        return ConfigError(self.where, self.message, file=file)


class ArtifactError(FactoryError):
    """An artifact on disk is incomplete or corrupted."""

"""The neutral core that ``factory`` and ``evals`` both stand on.

Nothing here imports either package: errors that print as one line
(:mod:`foundation.errors`), content hashes (:mod:`foundation.hashing`), typed
configs with YAML-path errors (:mod:`foundation.configs`), the on-disk cache
and PyPI fetching (:mod:`foundation.cache`, :mod:`foundation.fetch`),
artifact manifests (:mod:`foundation.artifacts`), the host description that
every manifest records (:mod:`foundation.host`), device and matmul-precision
helpers (:mod:`foundation.device`) and chat rendering for templates with or
without tool support (:mod:`foundation.chat`)."""

__version__ = "0.1.0"  # the distribution's version; factory.__version__ is this one

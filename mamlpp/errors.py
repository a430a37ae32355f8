"""User-facing errors. The CLI prints their message on one line and exits with code 2."""


class MamlppError(Exception):
    """Base of every error caused by the user's input (paths, data, config, CLI arguments).

    The message names the problem and the fix; no traceback is shown for these."""


class DataError(MamlppError):
    """Missing, malformed or insufficient data (wrong root, corrupt image, impossible N-way)."""

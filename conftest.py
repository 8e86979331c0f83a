"""Make nbval's sanitize file path independent of pytest's working directory."""

from pathlib import Path


def pytest_configure(config):
    sanitize = getattr(config.option, "nbval_sanitize_with", None)
    if sanitize and not Path(sanitize).is_absolute():
        config.option.nbval_sanitize_with = str(Path(__file__).parent / sanitize)

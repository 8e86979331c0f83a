"""Test-session settings shared by every test folder."""

from pathlib import Path


def pytest_configure(config):
    # nbval resolves the sanitize file from the working directory; make it independent of it
    sanitize = getattr(config.option, "nbval_sanitize_with", None)
    if sanitize and not Path(sanitize).is_absolute():
        config.option.nbval_sanitize_with = str(Path(__file__).parent / sanitize)
    # the tests' models are tiny: one torch thread is much faster on a busy 2-core machine than two
    import torch

    torch.set_num_threads(1)

"""Test-session settings shared by every test folder."""

from pathlib import Path

ROOT = Path(__file__).parent


def pytest_configure(config):
    # nbval resolves the sanitize file from the working directory; make it independent of it
    sanitize = getattr(config.option, "nbval_sanitize_with", None)
    if sanitize and not Path(sanitize).is_absolute():
        config.option.nbval_sanitize_with = str(ROOT / sanitize)
    _compare_figures_with_tolerance()
    # the tests' models are tiny: one torch thread is much faster on a busy 2-core machine than two.
    # (This is the pytest process only; nbval's notebook kernels keep torch's default thread count.)
    import torch

    torch.set_num_threads(1)


def _compare_figures_with_tolerance():
    """nbval compares outputs exactly; plotly figures carry float arrays whose last bits depend on the CPU.
    Numbers in them are compared within a tolerance (tests/plotly_outputs.py), everything else exactly."""
    try:
        from nbval.plugin import IPyNbCell
    except ImportError:
        return
    import plotly_outputs

    if getattr(IPyNbCell.compare_outputs, "tolerant", False):
        return
    exact = IPyNbCell.compare_outputs

    def compare_outputs(self, test, ref, skip_compare=None):
        test, problems = plotly_outputs.tolerant_outputs(ref, test, sanitize=self.sanitize)
        if exact(self, test, ref, skip_compare):
            return True
        self.comparison_traceback.extend(f"  figure data beyond tolerance: {p}" for p in problems)
        return False

    compare_outputs.tolerant = True
    IPyNbCell.compare_outputs = compare_outputs

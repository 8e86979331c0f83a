"""The stored notebook outputs hold on another CPU. torch picks its SIMD kernels when it starts (AVX-512, AVX2
or none on x86; NEON on Apple silicon), and each computes other last bits. The main run of nbval checks the
notebooks under this machine's own kernels and torch's default thread count; this test checks them again in
a fresh pytest process under torch's plain kernels (`ATEN_CPU_CAPABILITY=default`) on one thread
(`OMP_NUM_THREADS=1`): other last bits everywhere, which the stored outputs must not depend on.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
PLAIN = {"ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "1"}


def test_notebooks_pass_nbval_under_torchs_plain_kernels_on_one_thread():
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("ATEN_CPU_CAPABILITY chooses among torch's x86 kernels")
    env = {**os.environ, **PLAIN}
    probe = "import torch; print(torch.backends.cpu.get_cpu_capability(), torch.get_num_threads())"
    seen = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert seen.stdout.split() == ["DEFAULT", "1"], seen.stdout  # what the notebooks' kernels start with
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *map(str, NOTEBOOKS)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout[-8000:]

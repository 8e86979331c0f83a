"""Comparing a written GGUF with llama.cpp's, as recorded in a golden JSON (its sha256, size and, per tensor,
"<type> <bytes> <sha256 prefix>"), shared by the whole-file quantize tests."""

from __future__ import annotations

import numpy as np
import pytest

from stablelm_lab import GGUFFile
from stablelm_lab.testing import sha256

__all__ = ["fail_unless_same_file", "sha256"]


def fail_unless_same_file(path, golden: dict, what: str) -> None:
    """Pass when the file at ``path`` has the golden's sha256; else fail naming the tensors that differ (or
    saying that all tensors are equal, so the difference is in the metadata or the order)."""
    if sha256(np.fromfile(path, np.uint8)) == golden["file_sha256"]:
        return
    g = GGUFFile(path)
    ours = {t.name: f"{t.qtype.name} {t.nbytes} {sha256(g.raw(t.name))[:16]}" for t in g.tensors}
    wrong = {n: (ours.get(n), r) for n, r in golden["tensors"].items() if ours.get(n) != r}
    pytest.fail(
        f"{what}: the file differs from llama.cpp's (size {path.stat().st_size} vs "
        f"{golden['file_size']}); tensors (ours, llama.cpp): {wrong or 'all equal: metadata or order'}"
    )

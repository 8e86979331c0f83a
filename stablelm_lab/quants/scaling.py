"""The arithmetic every decoder ends with: levels times their sub-block's scale, minus or plus a min."""

from __future__ import annotations

from .arrays import Array


def scale_levels(
    out: Array, levels: Array, scale: Array, minus: Array | None = None, plus: Array | None = None
) -> Array:
    """C's ``y = q·scale``, then ``- minus`` or ``+ plus``, in float32 and in that order, into out.

    levels (n, k, run): small integers (any integer dtype; the first pass writes them into out as
    float32, exactly) or float32 values; scale, minus, plus (n, k) float32, one for each run of weights;
    out (n, k·run) float32. numpy arrays or torch tensors alike. (Scales broadcast, not repeated per
    weight: np.repeat holds the GIL, and the numpy decoder runs in threads.)
    """
    shaped = out.reshape(levels.shape)  # a view: out is contiguous
    shaped[...] = levels
    shaped *= scale[..., None]
    if minus is not None:
        shaped -= minus[..., None]
    if plus is not None:
        shaped += plus[..., None]
    return out

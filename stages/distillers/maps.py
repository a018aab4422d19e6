"""Helpers of the methods that compare [C, H, W] feature maps (FitNet, AT, VID, AB, FT)."""
import torch.nn.functional as F


def match_spatial(a, b):
    """Average-pool whichever of two [B, C, H, W] maps is larger to the other's spatial size."""
    size = (min(a.shape[-2], b.shape[-2]), min(a.shape[-1], b.shape[-1]))
    if tuple(a.shape[-2:]) != size:
        a = F.adaptive_avg_pool2d(a, size)
    if tuple(b.shape[-2:]) != size:
        b = F.adaptive_avg_pool2d(b, size)
    return a, b


def map_shapes(context, method: str, taps) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """(student, teacher) per-sample shapes of each tap, refusing anything but [C, H, W] maps."""
    pairs = []
    for tap in taps:
        s, t = context.student_shapes.get(tap), context.teacher_shapes.get(tap)
        if s is None or t is None or len(s) != 3 or len(t) != 3:
            raise ValueError(f"--method {method} needs the [C, H, W] shapes of the student's and the teacher's "
                             f"{tap} (got {s} and {t})")
        pairs.append((tuple(s), tuple(t)))
    return pairs

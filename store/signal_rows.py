"""A loaded signal's rows, one small class per storage kind, each with its own gather of (sample index, view)
keys into float32 rows: dense or top-k, held in memory (a compressed store, loaded once) or read in place (a
contiguous store: store/contiguous.py)."""
from __future__ import annotations

import numpy as np

from .contiguous import DatasetRows, dense_topk_entries, float32_entries, take_entries
from .values import as_float32, densify_topk


class DenseInMemory:
    def __init__(self, values: np.ndarray):
        self.values = values  # float16 [N, V, C or D]

    def gather(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return as_float32(self.values[rows, cols])


class DenseInPlace:
    def __init__(self, values: DatasetRows):
        self.values = values

    def gather(self, rows, cols):
        return float32_entries(self.values, (rows, cols))  # widened as it is read, on every reading thread


class TopkInMemory:
    def __init__(self, indices: np.ndarray, values: np.ndarray, num_classes: int):
        self.indices, self.values, self.num_classes = indices, values, num_classes

    def gather(self, rows, cols):
        return densify_topk(self.indices[rows, cols], self.values[rows, cols], self.num_classes)

    def entries(self, rows, cols) -> tuple[np.ndarray, np.ndarray]:
        """The stored (class ids [B, k], values [B, k]) of each key."""
        return self.indices[rows, cols], self.values[rows, cols]


class TopkInPlace(TopkInMemory):
    def gather(self, rows, cols):
        return dense_topk_entries(self.indices, self.values, (rows, cols), self.num_classes)  # densified as read

    def entries(self, rows, cols):
        indices, values = take_entries([(self.indices, (rows, cols)), (self.values, (rows, cols))])
        return indices, values


def signal_rows(arrays: list, num_classes: int):
    """The kind of a signal's loaded arrays: one (dense) or two (top-k class ids and values), each an array in
    memory or rows read in place."""
    in_place = all(isinstance(a, DatasetRows) for a in arrays)
    if len(arrays) == 1:
        return (DenseInPlace if in_place else DenseInMemory)(arrays[0])
    return (TopkInPlace if in_place else TopkInMemory)(arrays[0], arrays[1], num_classes)

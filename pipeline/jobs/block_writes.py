"""Stage one's blocks written behind the teacher.

On CUDA a thread copies block k's outputs to the host (on its own stream, after an event that marks the end of the
block's kernels, so the copy does not wait for block k+1's) and writes them (top-k, .npy files in the partial
store) while the teacher labels block k+1. At most one group of blocks is in flight, so the outputs held on the
device stay bounded. Off CUDA the blocks are written inline: a CPU has no device to overlap with.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from ...store import StoreLayout, StoreWriter


class BlockWrites:
    def __init__(self, writer: StoreWriter, layout: StoreLayout, device: torch.device):
        self.writer, self.layout, self.device = writer, layout, device
        threaded = device.type == "cuda"
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="labelopt-block-writes") if threaded else None
        self.stream = torch.cuda.Stream(device) if threaded else None
        self.in_flight: Future | None = None

    def __enter__(self) -> "BlockWrites":
        return self

    def __exit__(self, kind, error, trace) -> None:
        try:
            if error is None:
                self.wait()  # a failed write is this run's error
        finally:
            if self.pool is not None:
                self.pool.shutdown(wait=True)

    def submit(self, group: list[int], labelled: dict) -> None:
        """Write the blocks of `group` from label_block's outputs (rows in block order)."""
        if self.pool is None:
            self._write(group, labelled, None)
            return
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(self.device))
        self.wait()
        self.in_flight = self.pool.submit(self._write, group, labelled, done)

    def wait(self) -> None:
        if self.in_flight is not None:
            future, self.in_flight = self.in_flight, None
            future.result()

    def _write(self, group: list[int], labelled: dict, done: torch.cuda.Event | None) -> None:
        host = self._on_host(labelled, done)
        start = 0
        for b in group:
            lo, hi = self.layout.block_range(b)
            self.writer.write_block(b, **rows_of(host, start, start + hi - lo))
            start += hi - lo

    def _on_host(self, labelled: dict, done: torch.cuda.Event | None) -> dict:
        def host(t):
            return t if t is None or isinstance(t, np.ndarray) else t.cpu().numpy()
        if done is None:
            return _map_arrays(labelled, host)
        torch.cuda.set_device(self.device)
        with torch.cuda.stream(self.stream):
            self.stream.wait_event(done)
            return _map_arrays(labelled, host)


def _map_arrays(labelled: dict, convert) -> dict:
    out = {k: convert(v) for k, v in labelled.items() if k != "features"}
    features = labelled.get("features")
    out["features"] = None if features is None else {k: convert(v) for k, v in features.items()}
    return out


def rows_of(labelled: dict, start: int, stop: int) -> dict:
    """Rows [start, stop) of label_block's arrays (one block of a multi-block batch)."""
    part = lambda a: None if a is None else a[start:stop]
    return {"targets": part(labelled["targets"]), "labels": part(labelled["labels"]),
            "logits": part(labelled["logits"]), "view_params": part(labelled["view_params"]),
            "features": None if labelled["features"] is None else {k: part(v) for k, v in labelled["features"].items()}}

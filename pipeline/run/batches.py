"""Stage two's batches, finished ahead of the training step: the one place a .beton row meets its store row.

For each step the `BatchLoader`, in its own thread and `ahead` batches in advance:
1. takes the .beton batch (uint8 images, labels, sample indices) out of FFCV's reused buffers,
2. draws the step's views with the epoch's CPU generator (the same draws, in the same order, as a loop that drew
   them inline: resume and stored == online stay exact) and makes their pixels,
3. gathers the label store's rows for those (index, view) keys, where the run's teacher is a store,
4. hands the step a finished `ViewedBatch` on the device. On a GPU the host tensors are pinned, copied without
   blocking on a side stream, and the step's stream waits on an event; nothing in the step syncs with the host.

A store-backed run and an online one differ only in `teacher_rows`: the store's rows come with the batch, an online
teacher runs in the step. `ahead=0` does the same work inline, in the step's thread: the default off CUDA. A CPU
has no idle device to overlap with (the step and the loader share its cores), and there a run must repeat bit for
bit; with the loader's torch work running beside the step, oneDNN's convolution weight gradients came out
different in their last bits from one run to the next (seen on 2 cores).
"""
from __future__ import annotations

import queue
import threading
from typing import Callable, Iterator

import torch

from ...stages.batch import ViewedBatch
from ..data.loading import SplitLoader
from ..views.draws import ViewSampler
from .runtime import to_device

# (sample indices int64 [B], store view positions int64 [B] or None) -> {signal: float32 rows}, on the CPU
TeacherRows = Callable[[torch.Tensor, "torch.Tensor | None"], dict]
_DONE = object()
BATCH_RANGE = "labelopt.batch"  # a batch's views, store rows and copy, as profilers show it (benchmarks/step_ops.py)


class BatchLoader:
    def __init__(self, loader: SplitLoader, sampler: ViewSampler, device: torch.device,
                 teacher_rows: TeacherRows | None = None, ahead: int | None = None):
        self.loader, self.sampler, self.device = loader, sampler, device
        self.teacher_rows = teacher_rows
        self.ahead = (2 if device.type == "cuda" else 0) if ahead is None else ahead
        self.copy_stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def __len__(self) -> int:
        return len(self.loader)

    def epoch(self, epoch: int, generator: torch.Generator) -> Iterator[ViewedBatch]:
        """The epoch's finished batches, in order; `generator` draws the views (seeded per epoch by the caller)."""
        if self.ahead == 0:
            for host in self.loader.host_batches(epoch, pin=self.copy_stream is not None):
                yield self._on_step_stream(self._finish(host, generator))
            return
        yield from self._threaded(epoch, generator)

    # -- the work of one batch --------------------------------------------------------------------------

    def _finish(self, host, generator: torch.Generator):
        """(the ViewedBatch on the device, the copy's event or None) from one host batch."""
        images, labels, indices = host
        with torch.profiler.record_function(BATCH_RANGE):
            if self.copy_stream is None:
                return self._assemble(images, labels, indices, generator), None
            with torch.cuda.stream(self.copy_stream):
                batch = self._assemble(images, labels, indices, generator)
                event = torch.cuda.Event()
                event.record(self.copy_stream)
            return batch, event

    def _assemble(self, images, labels, indices, generator) -> ViewedBatch:
        pinned = self.copy_stream is not None
        images = images.to(self.device, non_blocking=pinned)
        drawn = self.sampler.draw(images, indices, generator)
        teacher = {}
        if self.teacher_rows is not None:
            rows = self.teacher_rows(indices, drawn.views)
            teacher = {name: to_device(t, self.device) for name, t in rows.items()}
        mix = (None, None) if drawn.mix is None else (to_device(t, self.device) for t in drawn.mix)
        return ViewedBatch(drawn.images, to_device(labels, self.device), indices, drawn.views, *mix, teacher=teacher)

    def _on_step_stream(self, finished) -> ViewedBatch:
        batch, event = finished
        if event is not None:
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(event)
            for tensor in batch.device_tensors():  # made on the copy stream, used (and freed) on this one
                tensor.record_stream(stream)
        return batch

    # -- ahead, in a thread -------------------------------------------------------------------------------

    def _threaded(self, epoch: int, generator: torch.Generator) -> Iterator[ViewedBatch]:
        ready: queue.Queue = queue.Queue(maxsize=self.ahead)
        stop = threading.Event()
        worker = threading.Thread(target=self._produce, args=(epoch, generator, ready, stop),
                                  name=f"labelopt-batches-epoch{epoch}", daemon=True)
        worker.start()
        try:
            while True:
                item = ready.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield self._on_step_stream(item)
        finally:  # the step stopped early (an error, a diverged loss): release the thread, then wait for it
            stop.set()
            while worker.is_alive():
                try:
                    ready.get(timeout=0.05)
                except queue.Empty:
                    pass
            worker.join()

    def _produce(self, epoch, generator, ready: queue.Queue, stop: threading.Event) -> None:
        try:
            if self.copy_stream is not None:
                torch.cuda.set_device(self.device)  # a new thread starts on GPU 0; a torchrun rank has its own
            for host in self.loader.host_batches(epoch, pin=self.copy_stream is not None):
                if stop.is_set() or not _put(ready, self._finish(host, generator), stop):
                    return
            _put(ready, _DONE, stop)
        except BaseException as exc:  # raised again in the step's thread, where the run reports it
            _put(ready, exc, stop)


def _put(ready: queue.Queue, item, stop: threading.Event) -> bool:
    """Queue `item` unless the consumer has stopped; False when it has."""
    while not stop.is_set():
        try:
            ready.put(item, timeout=0.05)
            return True
        except queue.Full:
            continue
    return False

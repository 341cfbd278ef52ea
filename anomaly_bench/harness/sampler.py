"""The one resumable batch sampler of the trainer (:mod:`anomaly_bench.harness.trainer`)."""

from __future__ import annotations

from typing import Any

import torch


class BatchSampler:
    """Shuffled index batches (drop-last), epoch after epoch, drawn with ``generator``; resumable.

    Each epoch draws ``streams`` independent permutations (``torch.randperm(n, generator=generator)``;
    ``torch.arange`` when ``shuffle`` is false; ALAD uses two streams, one for the D step and one for the G/E step)
    when its first batch is asked for, so a generator shared with other draws (f-AnoGAN's noise and flips) is used
    in the order of a plain loop: the order of :func:`anomaly_bench.nn.common.batch_stream`. The state is the epoch's
    permutations, the position and the generator state, so a resumed run draws exactly the batches (and generator
    values) an uninterrupted run would. :meth:`next` gives index batches (one per stream); with ``data``,
    :meth:`next_batch` gives ``data[indices]`` (the permutations are moved to the data's device once per epoch, so
    drawing a batch never syncs).
    """

    def __init__(self, n: int, batch_size: int, generator: torch.Generator, streams: int = 1, shuffle: bool = True,
                 data: torch.Tensor | None = None):
        self.n, self.bs, self.generator, self.streams, self.shuffle = n, min(batch_size, n), generator, streams, shuffle
        self.data = data
        self.batches_per_epoch = n // self.bs
        self.epoch, self.pos = 0, 0
        self.perms: list[torch.Tensor] | None = None
        self._on_data: list[torch.Tensor] = []

    def _draw(self) -> None:
        if self.shuffle:
            self.perms = [torch.randperm(self.n, generator=self.generator) for _ in range(self.streams)]
        else:
            self.perms = [torch.arange(self.n) for _ in range(self.streams)]
        self._move()

    def _move(self) -> None:
        self._on_data = [] if self.data is None or self.perms is None else [p.to(self.data.device) for p in self.perms]

    def _advance(self) -> slice:
        if self.perms is None or self.pos >= self.batches_per_epoch:
            if self.perms is not None:
                self.epoch += 1
            self.pos = 0
            self._draw()
        self.pos += 1
        return slice((self.pos - 1) * self.bs, self.pos * self.bs)

    def next(self) -> list[torch.Tensor]:
        """The next batch of indices of each stream (CPU tensors)."""
        s = self._advance()
        return [p[s] for p in self.perms]

    def next_indices(self) -> torch.Tensor:
        """The next batch of indices of the first stream."""
        return self.next()[0]

    def next_batch(self) -> torch.Tensor | list[torch.Tensor]:
        """``data[indices]`` for the next batch (a list with several streams); the indices without ``data``."""
        if self.data is None:
            idx = self.next()
        else:
            s = self._advance()
            idx = [self.data[p[s]] for p in self._on_data]
        return idx[0] if self.streams == 1 else idx

    def state_dict(self) -> dict[str, Any]:
        perms = None if self.perms is None else [p.clone() for p in self.perms]
        return {"perms": perms, "pos": self.pos, "epoch": self.epoch, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.perms, self.pos, self.epoch = state["perms"], int(state["pos"]), int(state["epoch"])
        self.generator.set_state(state["generator"])
        self._move()

"""A machine-readable progress file that other processes can poll.

`progress.json` in the run's work folder is replaced atomically at most
every PROGRESS_INTERVAL seconds during an epoch and at every epoch end:
status, epoch, batch, latest metrics, images/s, ETA, pid and a heartbeat
timestamp (`updated_at`, seconds since the epoch) that the job runner uses to
tell a live training from a dead one.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import keras

from cifar.artifacts import read_json_or_empty, write_json_atomic

PROGRESS_INTERVAL = 1.0


def read_progress(path: Path) -> dict:
    """A progress file's state, or {} before the training has written one."""
    return read_json_or_empty(path)


class ProgressFile:
    def __init__(self, path: Path, run_id: str, config, n_train: int):
        self.path = path
        self.state = {"run_id": run_id, "model": config.model, "epochs": config.epochs,
                      "n_train": n_train, "pid": os.getpid(), "epoch": 0, "batch": 0,
                      "batches": 0, "metrics": {}, "eta_seconds": None}
        self.epoch_seconds: list[float] = []  # whole epochs, validation included (train.py fills it)
        self.last_train_seconds: float | None = None
        self._epoch_start = time.perf_counter()
        self._written = 0.0

    def update(self, **fields) -> None:
        self.state.update(fields, updated_at=time.time(), epoch_seconds=self.epoch_seconds)
        write_json_atomic(self.path, self.state)
        self._written = time.monotonic()

    def epoch_started(self, epoch: int) -> None:
        self._epoch_start = time.perf_counter()
        self.state.update(epoch=epoch, batch=0)

    def _eta(self, batch: int, batches: int) -> float | None:
        """This epoch's remaining batches, plus later epochs at the typical
        whole-epoch time seen so far (validation included; the first epoch,
        which compiles, only when nothing else is known)."""
        elapsed = time.perf_counter() - self._epoch_start
        if batch == 0 or batches == 0:
            return None
        this_epoch = elapsed / batch * batches
        known = self.epoch_seconds[1:] or self.epoch_seconds
        per_epoch = sorted(known)[len(known) // 2] if known else this_epoch
        remaining_epochs = self.state["epochs"] - self.state["epoch"] - 1
        return max(this_epoch - elapsed, 0.0) + remaining_epochs * per_epoch

    def callback(self) -> keras.callbacks.Callback:
        owner = self

        class _Progress(keras.callbacks.Callback):
            # Logs are only read when the file is written (about once a
            # second), so Keras may keep dispatching batches asynchronously.
            async_safe = True

            def on_epoch_begin(self, epoch, logs=None):
                owner._epoch_start = time.perf_counter()

            def on_train_batch_end(self, batch, logs=None):
                batches = (self.params or {}).get("steps") or 0
                owner.last_train_seconds = time.perf_counter() - owner._epoch_start
                if time.monotonic() - owner._written >= PROGRESS_INTERVAL or batch + 1 == batches:
                    owner.update(status="running", batch=batch + 1, batches=batches,
                                 metrics={k: float(v) for k, v in (logs or {}).items()},
                                 eta_seconds=owner._eta(batch + 1, batches),
                                 images_per_s=(batch + 1) * owner.state["n_train"] / max(batches, 1)
                                 / max(owner.last_train_seconds, 1e-9) if batches else None)

            def on_epoch_end(self, epoch, logs=None):
                owner.update(status="running", epoch=epoch + 1, batch=0,
                             metrics={k: float(v) for k, v in (logs or {}).items()})

        return _Progress()

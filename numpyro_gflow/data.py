"""Mini-batches streamed from host memory, for datasets that do not fit on the device.

The model declares the data plate with its full size and the batch size, and takes the batch
arrays as keyword arguments::

    def model(X, y, num_rows):
        w = numpyro.sample("w", dist.Normal(0, 1).expand([X.shape[1]]).to_event(1))
        with numpyro.plate("data", num_rows, subsample_size=X.shape[0]):
            numpyro.sample("obs", dist.Bernoulli(logits=X @ w), obs=y)

    loader = gf.StreamedData(1000, X=X_host, y=y_host)          # numpy arrays, rows on axis 0
    result = gf.SVGD(model).run(rng_key, 10_000, num_rows=len(y_host), data_loader=loader)

Each step the model sees one batch ``X[idx], y[idx]`` of ``batch_size`` rows and NumPyro's plate
scales its log-likelihood by ``num_rows / batch_size`` (the plate's own rescaling), so the
gradient is unbiased. The engine pins that plate's indices to ``0..batch_size-1`` (the rows of
the batch it was given) instead of drawing them from the full range. Batches are drawn on the
host without replacement within an epoch (a fresh permutation per epoch, a function of the run's
``rng_key`` and the step number: the same key gives the same batches), gathered with numpy
and copied to the device a chunk of steps at a time, the next chunk while the device works on
the current one. Only ``steps_per_transfer x batch_size`` rows are on the device at once.

What the result computes after the run with the model's density (``result.elbo``, log
likelihoods for ArviZ, a fitted density's guide used with `Predictive` on the same inputs)
sees the first ``batch_size`` rows, rescaled by the plate: an estimate from one batch, not the
full data. `MixFlow` does not take a data loader (its flow map needs the exact density).
"""

from __future__ import annotations

import numpy as np

__all__ = ["StreamedData"]


class StreamedData:
    """Host arrays with a common leading (row) axis, served to a model in mini-batches.

    Args:
        batch_size: rows per step; must equal the ``subsample_size`` of the model's data plate.
        shuffle: draw each epoch's batches from a random permutation (default); ``False``
            serves rows in order (epoch after epoch).
        steps_per_transfer: steps' worth of batches copied to the device at once. ``"auto"``
            (default): as many as fit in 64 MiB, between 1 and 1000.
        **arrays: the data, by the keyword under which the model takes them (numpy arrays or
            anything ``np.asarray`` accepts; they stay in host memory).
    """

    def __init__(self, batch_size: int, *, shuffle: bool = True, steps_per_transfer="auto",
                 **arrays):
        if (isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer))
                or batch_size < 1):
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if not arrays:
            raise ValueError("StreamedData needs at least one array, passed by keyword "
                             "(the model's argument name), e.g. StreamedData(1000, X=X, y=y)")
        self.arrays = {}
        for name, value in arrays.items():
            a = np.asarray(value)
            if a.ndim == 0:
                raise ValueError(f"array {name!r} is a scalar; StreamedData serves rows of arrays")
            self.arrays[name] = a
        lengths = {name: a.shape[0] for name, a in self.arrays.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"the arrays must have the same number of rows, got {lengths}")
        self.num_rows = next(iter(lengths.values()))
        if batch_size > self.num_rows:
            raise ValueError(f"batch_size={batch_size} exceeds the number of rows "
                             f"({self.num_rows})")
        self.batch_size = int(batch_size)
        if not isinstance(shuffle, bool):
            raise TypeError(f"shuffle must be a bool, got {type(shuffle).__name__}")
        self.shuffle = shuffle
        row_bytes = sum(a[0].nbytes for a in self.arrays.values())
        if steps_per_transfer == "auto":
            steps_per_transfer = int(np.clip((64 << 20) // max(1, row_bytes * self.batch_size),
                                             1, 1000))
        elif (isinstance(steps_per_transfer, bool)
              or not isinstance(steps_per_transfer, (int, np.integer))
              or steps_per_transfer < 1):
            raise ValueError("steps_per_transfer must be 'auto' or a positive int, "
                             f"got {steps_per_transfer!r}")
        self.steps_per_transfer = int(steps_per_transfer)
        #: whole batches per epoch (the remainder rows of a permutation wait for the next epoch)
        self.batches_per_epoch = self.num_rows // self.batch_size
        self._order_cache: tuple | None = None

    def __repr__(self):
        shapes = ", ".join(f"{k}={a.shape}" for k, a in self.arrays.items())
        return f"StreamedData(batch_size={self.batch_size}, {shapes})"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.arrays)

    def first_batch(self) -> dict:
        """The first ``batch_size`` rows: the shapes the model is traced and compiled with."""
        return {k: a[: self.batch_size] for k, a in self.arrays.items()}

    def _epoch_order(self, seed: int, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.num_rows)
        if self._order_cache is None or self._order_cache[:2] != (seed, epoch):
            order = np.random.default_rng([seed, epoch]).permutation(self.num_rows)
            self._order_cache = (seed, epoch, order)
        return self._order_cache[2]

    def indices(self, seed: int, start: int, num_steps: int) -> np.ndarray:
        """Row indices (num_steps, batch_size) of global steps
        ``start .. start + num_steps - 1``."""
        out = np.empty((num_steps, self.batch_size), np.int64)
        for i, step in enumerate(range(start, start + num_steps)):
            epoch, k = divmod(step, self.batches_per_epoch)
            out[i] = self._epoch_order(seed, epoch)[k * self.batch_size:(k + 1) * self.batch_size]
        return out

    def batches(self, seed: int, start: int, num_steps: int) -> dict:
        """The arrays gathered for those steps: name -> (num_steps, batch_size, ...) numpy."""
        idx = self.indices(seed, start, num_steps)
        return {k: a[idx] for k, a in self.arrays.items()}

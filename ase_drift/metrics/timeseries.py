"""Time-series statistics of correlated frames (MD trajectories): autocorrelation time, effective
sample size and block-bootstrap error bars. Axis 0 is time."""

from __future__ import annotations

import numpy as np


def _autocorrelation(x: np.ndarray) -> np.ndarray:
    """Normalised autocorrelation ρ(t) along axis 0 of ``[T, k]`` via FFT, ρ(0) = 1."""
    n_frames = len(x)
    centred = x - x.mean(axis=0)  # [T, k]
    # Zero-pad to ≥ 2T so the circular FFT correlation equals the linear one.
    n_fft = 1 << (2 * n_frames - 1).bit_length()
    spectrum = np.fft.rfft(centred, n=n_fft, axis=0)
    autocovariance = np.fft.irfft(spectrum * spectrum.conj(), n=n_fft, axis=0)[:n_frames]
    if np.any(autocovariance[0] <= 0):
        raise ValueError("autocorrelation of a constant series is undefined")
    return autocovariance / autocovariance[0]  # [T, k]


def integrated_autocorrelation_time(x, c: float = 5.0) -> float:
    """Integrated autocorrelation time τ = 1 + 2 Σ_{t=1}^{W} ρ(t), in frames.

    ρ is the FFT autocorrelation (biased estimator, divided by the variance); the window W is
    Sokal's: the smallest W with W ≥ c·τ(W). For ``[T, k]`` input τ is computed per column and
    the largest is returned. An AR(1) series x_t = a x_{t−1} + ε has τ = (1 + a)/(1 − a).
    """
    x = np.asarray(x, dtype=float)
    columns = x.reshape(len(x), -1)  # [T, k]
    tau = 2.0 * np.cumsum(_autocorrelation(columns), axis=0) - 1.0  # [T, k], τ(W) at row W
    window_large_enough = np.arange(len(x))[:, None] >= c * tau  # [T, k]
    # No admissible window (series too short): fall back to the longest one.
    window = np.where(
        window_large_enough.any(axis=0), window_large_enough.argmax(axis=0), len(x) - 1
    )  # [k]
    return float(tau[window, np.arange(columns.shape[1])].max())


def effective_sample_size(x, c: float = 5.0) -> float:
    """Number of frames divided by :func:`integrated_autocorrelation_time`."""
    return len(x) / integrated_autocorrelation_time(x, c)


def block_bootstrap(fn, series, n_blocks: int = 20, n_boot: int = 200, seed: int = 0):
    """Error bar of a scalar statistic ``fn(series)`` of a time series (axis 0 is time).

    The series is cut into ``n_blocks`` contiguous blocks (a remainder of fewer than one block
    at the end is dropped); each replicate redraws ``n_blocks`` blocks with replacement, so
    correlations shorter than a block survive resampling. Returns ``(fn(series), std)``: the
    point estimate on the full series and the standard deviation over ``n_boot`` replicates.
    """
    series = np.asarray(series)
    block_length = len(series) // n_blocks
    if block_length < 1:
        raise ValueError(f"{len(series)} frames cannot form {n_blocks} blocks")
    frame_shape = series.shape[1:]
    blocks = series[: n_blocks * block_length].reshape(n_blocks, block_length, *frame_shape)
    picks = np.random.default_rng(seed).integers(n_blocks, size=(n_boot, n_blocks))
    replicates = [float(fn(blocks[pick].reshape(-1, *frame_shape))) for pick in picks]
    return float(fn(series)), float(np.std(replicates, ddof=1))

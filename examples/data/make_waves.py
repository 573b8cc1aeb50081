"""Write waves_train.npz (T=50) and waves_long.npz (T=500): noisy sine waves of three periods,
to be told apart by examples/sequence_model.nn.

Each file holds `x`: f32[N, T, 1], a sine of period 6, 11 or 19 steps with a random phase and
amplitude plus noise, and `y`: i64[N], the index of its period. The seed fixes both files.
"""
import numpy as np

SEED = 0
PERIODS = (6.0, 11.0, 19.0)


def waves(rng, count: int, steps: int) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(0, len(PERIODS), count)
    period = np.array(PERIODS)[y][:, None]
    phase = rng.uniform(0.0, 2 * np.pi, (count, 1))
    amplitude = rng.uniform(0.5, 1.5, (count, 1))
    t = np.arange(steps)[None, :]
    x = amplitude * np.sin(2 * np.pi * t / period + phase) + 0.1 * rng.normal(size=(count, steps))
    return x[:, :, None].astype(np.float32), y.astype(np.int64)


def main():
    rng = np.random.default_rng(SEED)
    x, y = waves(rng, 512, 50)
    np.savez_compressed("waves_train.npz", x=x, y=y)
    x, y = waves(rng, 64, 500)
    np.savez_compressed("waves_long.npz", x=x, y=y)


if __name__ == "__main__":
    main()

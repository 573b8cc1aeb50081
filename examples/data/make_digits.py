"""Rebuild digits_train.npz and digits_test.npz (and digits_rows_*.npz, the images as 8 rows
of 8 pixels) from scikit-learn's copy of the UCI digits.

Needs scikit-learn (an optional extra, not a dependency of chainrule). The split is fixed by
the seed: 1,438 training and 359 test images, stratified by class.
"""
import numpy as np
from sklearn.datasets import load_digits

SEED = 0
TEST_FRACTION = 0.2


def main():
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)   # pixel counts 0..16 -> [0, 1]
    y = digits.target.astype(np.int64)
    rng = np.random.default_rng(SEED)
    test = np.zeros(len(y), dtype=bool)
    for label in range(10):
        members = np.flatnonzero(y == label)
        count = int(round(len(members) * TEST_FRACTION))
        test[rng.choice(members, count, replace=False)] = True
    np.savez_compressed("digits_train.npz", x=x[~test], y=y[~test])
    np.savez_compressed("digits_test.npz", x=x[test], y=y[test])
    # The same images as sequences of 8 rows of 8 pixels, for recurrent models.
    rows = x.reshape(-1, 8, 8)
    np.savez_compressed("digits_rows_train.npz", x=rows[~test], y=y[~test])
    np.savez_compressed("digits_rows_test.npz", x=rows[test], y=y[test])
    print(f"train {int((~test).sum())}, test {int(test.sum())}")


if __name__ == "__main__":
    main()

"""Digits: chainrule's `train` defaults on both backends beside scikit-learn's MLPClassifier.

    python bench/digits.py

Same split (examples/data), same hidden size (128), epochs (20), batch (32), optimizer (Adam,
lr 0.001) and L2 strength (1e-4). scikit-learn is an optional extra, not a dependency.
"""
from __future__ import annotations

import os
import time
import warnings

import numpy as np

import chainrule
from chainrule.train import TrainConfig, Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(name):
    with np.load(os.path.join(ROOT, "examples", "data", name), allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def main():
    train, test = load("digits_train.npz"), load("digits_test.npz")
    print("| system | test accuracy | wall time (s) |")
    print("|---|---:|---:|")
    for backend in ("numpy", "onnxruntime"):
        model = chainrule.compile(os.path.join(ROOT, "examples", "mlp_digits.nn"))
        trainer = Trainer(model, TrainConfig(backend=backend))
        started = time.perf_counter()
        trainer.fit(train)
        seconds = time.perf_counter() - started
        accuracy = trainer.evaluate(test)["acc"]
        print(f"| chainrule-{backend} | {accuracy * 100:.2f}% | {seconds:.2f} |")
    try:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.neural_network import MLPClassifier
    except ImportError:
        print("| scikit-learn MLPClassifier | not installed | |")
        return
    classifier = MLPClassifier(hidden_layer_sizes=(128,), solver="adam", learning_rate_init=1e-3,
                               batch_size=32, max_iter=20, alpha=1e-4, random_state=0)
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # 20 epochs, as chainrule's
        classifier.fit(train["x"], train["y"])
    seconds = time.perf_counter() - started
    accuracy = classifier.score(test["x"], test["y"])
    print(f"| scikit-learn MLPClassifier | {accuracy * 100:.2f}% | {seconds:.2f} |")


if __name__ == "__main__":
    main()

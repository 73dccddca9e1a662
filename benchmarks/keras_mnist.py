"""The notes' exercise-9 network trained the notes' way in Keras (TensorFlow backend): the reference
`benchmarks/mnist.py --keras` compares cnnkit with. Run by a Python that has TensorFlow:

    python benchmarks/keras_mnist.py --data-dir ../shared/data --epochs 1 --threads 2

Same data and split as cnnkit: the first 55,000 training images to train on, the last 5,000 to
validate after every epoch (as `model.fit(validation_data=...)` does), pixels / 255, Nadam lr 1e-3,
batch 32, Glorot-uniform kernels (Keras' default), no augmentation. Prints one JSON line: training
seconds (validation included, the first epoch's graph tracing too), images/s, validation and test
accuracy, and the versions. It imports neither torch nor cnnkit, so the two never share a process.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time
from pathlib import Path

FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def read_idx(path: Path):
    """An MNIST IDX file (gzip) -> numpy array: 16-byte header for images, 8 for labels."""
    import numpy as np

    raw = gzip.decompress(path.read_bytes())
    dims = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * dims).reshape(shape)


def cpu_name() -> str:
    """The processor's model name, as cnnkit.engine.precision.cpu_name reads it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"


def load(data_dir: Path, split: str):
    images, labels = (read_idx(data_dir / "mnist" / name) for name in FILES[split])
    return (images.astype("float32") / 255.0)[..., None], labels.astype("int64")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=os.environ.get("CNNKIT_DATA"), help="folder holding mnist/")
    p.add_argument("--epochs", type=int, default=10, help="the notes train 10 epochs")
    p.add_argument("--threads", type=int, default=0, help="TensorFlow intra-op threads (0: all cores)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not args.data_dir:
        p.error("--data-dir (or $CNNKIT_DATA) must name the folder holding mnist/")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf
    from keras import layers

    threads = args.threads or os.cpu_count() or 1
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    keras.utils.set_random_seed(args.seed)
    x, y = load(Path(args.data_dir), "train")
    xt, yt = load(Path(args.data_dir), "test")
    x, y, xv, yv = x[:55000], y[:55000], x[55000:], y[55000:]
    model = keras.Sequential(
        [  # the notes' exercise 9 (= cnnkit's exercise9_mnist)
            keras.Input((28, 28, 1)),
            layers.Conv2D(32, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(2),
            layers.Conv2D(64, 3, padding="same", activation="relu"),
            layers.Conv2D(64, 3, padding="same", activation="relu"),
            layers.Flatten(),
            layers.Dropout(0.25),
            layers.Dense(128, activation="relu"),
            layers.Dropout(0.5),
            layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(optimizer=keras.optimizers.Nadam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    t = time.perf_counter()
    history = model.fit(x, y, batch_size=32, epochs=args.epochs, validation_data=(xv, yv), verbose=0)
    seconds = time.perf_counter() - t
    test_acc = model.evaluate(xt, yt, batch_size=1000, verbose=0)[1]
    print(
        json.dumps(
            dict(
                seconds=seconds,
                epochs=args.epochs,
                ips=args.epochs * len(x) / seconds,
                val_acc=history.history["val_accuracy"][-1],
                test_acc=test_acc,
                threads=threads,
                cpu=cpu_name(),
                keras=keras.__version__,
                tensorflow=tf.__version__,
            )
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

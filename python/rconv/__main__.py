"""Command line: ``python -m rconv demo`` and ``python -m rconv bench``.

``demo`` trains LeNet-5 on the shipped MNIST digits (progress bar, test accuracy, images
per second) and writes its learned filters and one digit's feature maps as PNG; ``bench`` is
reserved for the benchmark suite. Only NumPy is needed: matplotlib is imported only where
pictures are written, and without it the demo still trains.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

# Dark to bright, one character per level.
_RAMP = " .:-=+*#%@"


def _ascii(image: np.ndarray, width: int = 2) -> List[str]:
    """Render a 2D array as rows of characters, scaled from 0 to its maximum.

    Each pixel becomes ``width`` characters, since a character cell is about twice as tall
    as it is wide.
    """
    image = np.asarray(image, dtype=np.float64)
    top = float(image.max()) if image.size else 0.0
    if not np.isfinite(top) or top <= 0.0:
        levels = np.zeros(image.shape, dtype=np.intp)
    else:
        scaled = np.clip(image, 0.0, top) / top
        levels = np.minimum((scaled * len(_RAMP)).astype(np.intp), len(_RAMP) - 1)
    return ["".join(_RAMP[v] * width for v in row) for row in levels]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _require_functional_api(rconv_module, names: Sequence[str]) -> Optional[str]:
    missing = [n for n in names if not hasattr(rconv_module, n)]
    if missing:
        return (
            f"rconv {getattr(rconv_module, '__version__', '?')} has no {', '.join(missing)}: "
            "this build does not provide the functional API yet"
        )
    return None


# The demo's training setup. The suite's setup (SGD lr=0.01, momentum 0.9, batch 64) reaches
# about 96-97% on these 4,000 digits; a larger step, batch 32, a little weight decay and a
# tenfold lr drop for the last 5 epochs reach 97.3-97.6% over seeds, in 15 epochs.
DEMO_EPOCHS = 15
DEMO_BATCH = 32
DEMO_LR = 0.03
DEMO_LR_DROP_AT = 10  # epochs at DEMO_LR, then DEMO_LR / 10
DEMO_MOMENTUM = 0.9
DEMO_WEIGHT_DECAY = 5e-4


def cmd_demo(args: argparse.Namespace) -> int:
    import time

    import rconv
    from rconv import nn, optim
    from rconv.datasets import load_mnist_5k
    from rconv.models import lenet5

    problem = _require_functional_api(
        rconv, ["conv2d", "relu", "max_pool2d", "conv2d_backward", "max_pool2d_backward", "linear_backward"]
    )
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 1

    (x_train, y_train), (x_test, y_test) = load_mnist_5k()
    if not 0 <= args.index < len(x_test):
        print(f"error: --index must be in [0, {len(x_test)}), got {args.index}", file=sys.stderr)
        return 2
    if args.epochs < 1:
        print(f"error: --epochs must be >= 1, got {args.epochs}", file=sys.stderr)
        return 2

    nn.manual_seed(args.seed)
    model = lenet5()
    optimizer = optim.SGD(model.parameters(), lr=DEMO_LR, momentum=DEMO_MOMENTUM, weight_decay=DEMO_WEIGHT_DECAY)
    drop_at = min(DEMO_LR_DROP_AT, args.epochs)
    print(
        f"rconv {rconv.__version__}: LeNet-5 ({model.num_parameters():,} parameters) on "
        f"{len(x_train):,} shipped MNIST digits, tested on {len(x_test):,}; "
        f"{rconv.get_num_threads()} threads"
    )
    print(
        f"SGD momentum {DEMO_MOMENTUM}, weight decay {DEMO_WEIGHT_DECAY:g}, batch {DEMO_BATCH}: "
        f"lr {DEMO_LR:g} for {_plural(drop_at, 'epoch')}"
        + (f", then {DEMO_LR / 10:g} for {args.epochs - drop_at}" if args.epochs > drop_at else "")
        + f"; seed {args.seed}"
    )

    start = time.perf_counter()
    model.fit(
        x_train,
        y_train,
        epochs=args.epochs,
        batch_size=DEMO_BATCH,
        optimizer=optimizer,
        seed=args.seed,
        lr_schedule=lambda epoch: DEMO_LR if epoch < DEMO_LR_DROP_AT else DEMO_LR / 10,
    )
    seconds = time.perf_counter() - start
    test = model.evaluate(x_test, y_test)
    correct = round(test["accuracy"] * len(x_test))
    print()
    print(f"test accuracy: {100 * test['accuracy']:.1f}% ({correct}/{len(x_test)}), test loss {test['loss']:.4f}")
    print(
        f"training: {_plural(args.epochs, 'epoch')} x {len(x_train):,} images in {seconds:.1f} s "
        f"= {args.epochs * len(x_train) / seconds:,.0f} images/s"
    )

    x = x_test[args.index : args.index + 1]  # (1, 1, 28, 28)
    label = int(y_test[args.index])
    predicted = int(model.predict(x).argmax())
    print()
    print(f"test digit #{args.index}: a {label}, predicted {predicted}")
    print("\n".join(_ascii(rconv.max_pool2d(x, kernel_size=2)[0, 0])))
    print()

    try:
        from rconv import viz

        out = Path(args.out)
        filters_png = out / "filters.png"
        maps_png = out / "feature_maps.png"
        viz.plot_filters(model[0], filters_png)
        viz.plot_feature_maps(model, x, maps_png)
    except ImportError as e:
        print(f"no pictures: {e}")
        return 0
    print(f"wrote {filters_png} (the 6 learned first-layer filters)")
    print(f"wrote {maps_png} (digit #{args.index} through both convolution layers)")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from rconv import bench

    return bench.main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rconv",
        description="rconv: fast CPU building blocks for convolutional networks.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    demo = sub.add_parser(
        "demo",
        help="train LeNet-5 on the shipped MNIST digits and draw its filters",
        description="Train LeNet-5 on the 4,000 shipped MNIST training digits with a progress "
        "bar, print the accuracy on the 1,000 test digits and the training speed, and write "
        "the learned first-layer filters and one test digit's feature maps as PNG "
        "(needs matplotlib: pip install \"rconv[viz]\").",
    )
    demo.add_argument(
        "--out",
        default="rconv-demo-out",
        metavar="DIR",
        help="folder for the pictures (default: %(default)s)",
    )
    demo.add_argument(
        "--index",
        type=int,
        default=0,
        help="which test digit to draw the feature maps of, 0..999 (default: %(default)s)",
    )
    demo.add_argument(
        "--epochs",
        type=int,
        default=DEMO_EPOCHS,
        help="training epochs; the lr drops tenfold after epoch %d (default: %%(default)s)" % DEMO_LR_DROP_AT,
    )
    demo.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seeds the initial weights and the shuffle order (default: %(default)s)",
    )
    demo.set_defaults(func=cmd_demo)

    bench = sub.add_parser(
        "bench",
        help="run the benchmark suite, checked and side by side with installed peers",
        description="Time the suite (rconv/data/suite.json) with rconv and each installed peer "
        "(torch, onnxruntime), interleaved in one run; every result is checked first.",
    )
    bench.add_argument(
        "--against",
        default=None,
        help="peers to compare with, e.g. torch,onnxruntime (default: every installed one; "
        "'none' for no peer)",
    )
    bench.add_argument(
        "--threads", type=int, default=None, metavar="N", help="thread count for rconv and peers (default: 2)"
    )
    bench.add_argument("--json", default=None, metavar="PATH", help="also write results as JSON")
    bench.add_argument(
        "--entries", default=None, metavar="NAME,...", help="run only these suite entries ('train' for training)"
    )
    bench.add_argument(
        "--repeat", type=int, default=None, metavar="N", help="best of N repetitions (default: 7; 2 with --quick)"
    )
    bench.add_argument(
        "--quick", action="store_true", help="best of 2, short time caps, a 1024-image training epoch"
    )
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

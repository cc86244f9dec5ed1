"""Command line: ``python -m rconv demo`` and ``python -m rconv bench``.

``demo`` runs one shipped MNIST digit through fixed edge-detector filters
(CONV -> RELU -> POOL) and prints the shapes and an ASCII picture; ``bench`` is reserved
for the benchmark suite. Only NumPy is needed: matplotlib is imported only where pictures
are written.
"""

from __future__ import annotations

import argparse
import sys
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


def _side_by_side(blocks: Sequence[List[str]], titles: Sequence[str], gap: str = "   ") -> str:
    widths = [max(len(line) for line in block) for block in blocks]
    lines = [gap.join(t.ljust(w) for t, w in zip(titles, widths)).rstrip()]
    for row in zip(*blocks):
        lines.append(gap.join(r.ljust(w) for r, w in zip(row, widths)).rstrip())
    return "\n".join(lines)


def _require_functional_api(rconv_module, names: Sequence[str]) -> Optional[str]:
    missing = [n for n in names if not hasattr(rconv_module, n)]
    if missing:
        return (
            f"rconv {getattr(rconv_module, '__version__', '?')} has no {', '.join(missing)}: "
            "this build does not provide the functional API yet"
        )
    return None


def cmd_demo(args: argparse.Namespace) -> int:
    import rconv
    from rconv import filters
    from rconv.datasets import load_mnist_5k

    problem = _require_functional_api(rconv, ["conv2d", "relu", "max_pool2d"])
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 1

    _, (x_test, y_test) = load_mnist_5k()
    if not 0 <= args.index < len(x_test):
        print(f"error: --index must be in [0, {len(x_test)}), got {args.index}", file=sys.stderr)
        return 2
    x = x_test[args.index : args.index + 1]  # (1, 1, 28, 28)
    label = int(y_test[args.index])

    names = ["sobel_x", "sobel_y", "laplacian"]
    weight = filters.as_weight(*(getattr(filters, n) for n in names))  # (3, 1, 3, 3)

    maps = rconv.conv2d(x, weight, padding="same")
    rectified = rconv.relu(maps)
    pooled = rconv.max_pool2d(rectified, kernel_size=2)

    print(f"rconv {rconv.__version__}: fixed edge filters on test digit #{args.index} (a {label})")
    steps = [
        ("input", x),
        (f"weight ({', '.join(names)})", weight),
        ("conv2d(padding='same')", maps),
        ("relu", rectified),
        ("max_pool2d(kernel_size=2)", pooled),
    ]
    width = max(len(name) for name, _ in steps)
    for name, array in steps:
        print(f"  {name:<{width}}  {tuple(array.shape)}")
    print()

    digit = rconv.max_pool2d(x, kernel_size=2)[0, 0]
    print(
        _side_by_side(
            [_ascii(digit), _ascii(pooled[0, 0]), _ascii(pooled[0, 1])],
            ["digit (pooled)", "relu(sobel_x), pooled", "relu(sobel_y), pooled"],
        )
    )
    print()
    print(
        f"(--out {args.out} is reserved for the filter and feature-map pictures; "
        "this demo writes none yet)"
    )
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    print("rconv bench: not implemented yet", file=sys.stderr)
    return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rconv",
        description="rconv: fast CPU building blocks for convolutional networks.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    demo = sub.add_parser(
        "demo",
        help="run a shipped MNIST digit through fixed edge filters",
        description="Apply Sobel x/y and Laplacian kernels to one shipped MNIST digit with "
        "rconv.conv2d (padding='same'), then rconv.relu and rconv.max_pool2d; print the "
        "shapes and an ASCII rendering of the edge maps.",
    )
    demo.add_argument(
        "--out",
        default="rconv-demo-out",
        metavar="DIR",
        help="folder for pictures (reserved; default: %(default)s)",
    )
    demo.add_argument(
        "--index",
        type=int,
        default=0,
        help="which test digit to use, 0..999 (default: %(default)s)",
    )
    demo.set_defaults(func=cmd_demo)

    bench = sub.add_parser("bench", help="run the benchmark suite (not implemented yet)")
    bench.add_argument("--against", default="", help="peers to compare with, e.g. torch,onnxruntime")
    bench.add_argument("--threads", type=int, default=None, metavar="N", help="thread count")
    bench.add_argument("--json", default=None, metavar="PATH", help="also write results as JSON")
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

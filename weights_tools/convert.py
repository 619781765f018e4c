"""Convert a public VGG-19 weight file into an nst-jax params file.

    python -m weights_tools.convert SRC -o OUT [--preprocessing caffe|torch]

SRC is a Keras .h5/.hdf5, a PyTorch .pth/.pt or a timm .safetensors file (see docs/WEIGHTS.md),
recognised by its content whatever its name. The conversion itself is the library's
(`nst_jax.weights.convert`, the library function); this is its command line.
"""

import sys
from typing import Optional, Sequence

from nst_jax.cli.run import OneLineParser
from nst_jax.errors import bad_input_exits_2
from nst_jax.model.preprocess import PREPROCESSINGS
from nst_jax.weights.convert import convert, summary


def build_parser() -> OneLineParser:
    parser = OneLineParser(
        prog="python -m weights_tools.convert",
        description="Convert public VGG-19 weights to an nst-jax params file.")
    parser.add_argument("src", help="Keras .h5, PyTorch .pth or timm .safetensors file")
    parser.add_argument("-o", "--out", required=True, help="params file to write")
    parser.add_argument("--preprocessing", choices=PREPROCESSINGS,
                        help="input convention of the weights (needed for unknown .pth files)")
    return parser


@bad_input_exits_2
def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line; errors print `error: ...` and exit with status 2."""
    args = build_parser().parse_args(argv)
    metadata = convert(args.src, args.out, args.preprocessing)
    print(summary(args.out, metadata))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Download the default VGG-19 weights, verify, convert and cache them; print the params path.

    python -m weights_tools.fetch [--url URL] [--md5 HEX] [--force] [--preprocessing caffe|torch]

The download, checksums and cache are the library's (`nst_jax.weights.fetch`, which the run
command uses when no --weights is given); this is their command line.
"""

import argparse
import os
import sys
import urllib.parse
from typing import Optional, Sequence

from nst_jax.errors import bad_input_exits_2
from nst_jax.model.preprocess import PREPROCESSINGS
from nst_jax.weights import fetch as library


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m weights_tools.fetch",
        description="Download the default VGG-19 weights (Keras, Oxford/Caffe-derived), verify and "
                    "convert them into the cache; print the params file's path.")
    parser.add_argument("--url", default=library.DEFAULT_URL, help="weight file to download (default: %(default)s)")
    parser.add_argument("--md5", default=None, metavar="HEX",
                        help="expected checksum: 32 hex digits MD5 or 64 SHA-256 (default: known for the "
                             "Keras files)")
    parser.add_argument("--force", action="store_true", help="download and convert again even if cached")
    parser.add_argument("--preprocessing", choices=PREPROCESSINGS,
                        help="input convention of the weights (needed for a .pth of unknown origin)")
    return parser


@bad_input_exits_2
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.md5 is None and os.path.basename(urllib.parse.urlparse(args.url).path) not in library.KNOWN_CHECKSUMS:
        print(f"note: no checksum known for {args.url}; pass --md5 to verify it", file=sys.stderr)
    path = library.fetch(args.url, args.md5, force=args.force, preprocessing=args.preprocessing)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""python -m zoo.site MIRROR_ROOT OUT_DIR [--endpoint URL]: write the web catalog as static files."""
from __future__ import annotations

import argparse
import sys

from ..errors import ZooError
from . import build_site


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zoo.site", description=__doc__)
    parser.add_argument("mirror", help="mirror root (olah's mirrors-path)")
    parser.add_argument("out", help="folder for the pages (replaced)")
    parser.add_argument("--endpoint", help="the Hub API URL the snippets and file links point at")
    args = parser.parse_args(argv)
    try:
        print(f"wrote {build_site(args.mirror, args.out, endpoint=args.endpoint)}/index.html")
    except ZooError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

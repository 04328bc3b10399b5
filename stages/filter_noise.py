"""filter_noise: not built yet (its issue builds it). It fails loudly rather than pretend to work."""

import sys


def main() -> int:
    print("filter_noise: not implemented yet", file=sys.stderr)
    return 3


if __name__ == "__main__":
    sys.exit(main())

"""`python -m harness check FILE`: a saved model checked in every cell (`harness.check_file`)."""

import sys

from harness import check_file

USAGE = "usage: python -m harness check FILE [--inputs FILE.npz] [--keras-* options]"

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] != "check":
        print(USAGE, file=sys.stderr)
        sys.exit(4)
    sys.exit(check_file.main(sys.argv[2:]))

"""`python -m bertforge.train CONFIG [key=value ...]`: the entry point launchers use (composer -n N -m, torchrun)."""

import sys

from bertforge.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))

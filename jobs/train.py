"""`python jobs/train.py ...`: the `elasticast-train` command (elasticast/cli/train.py); `--help` lists its flags."""

import sys

from elasticast.cli.train import main

if __name__ == "__main__":
    sys.exit(main())

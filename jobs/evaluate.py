"""`python jobs/evaluate.py ...`: the `elasticast-evaluate` command (elasticast/cli/evaluate.py); `--help` lists its flags."""

import sys

from elasticast.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())

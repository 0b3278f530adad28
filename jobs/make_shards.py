"""`python jobs/make_shards.py ...`: the `elasticast-make-shards` command (elasticast/cli/make_shards.py); `--help` lists its flags."""

import sys

from elasticast.cli.make_shards import main

if __name__ == "__main__":
    sys.exit(main())

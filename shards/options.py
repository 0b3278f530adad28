"""Names, choices and defaults of the shard format and its build, apart from the heavy code so that
a command can offer them in `--help` without importing audio libraries."""

DATASET_FILE = "dataset.json"  # written last: its presence marks a complete shard set

LONG_CLIP_POLICIES = ("segment", "skip")  # what happens to a source longer than the duration limit
DEFAULT_MAX_DURATION_S = 600.0
SMALL_INPUT = 2000  # inputs the in-process backend builds faster than a freshly started Ray instance

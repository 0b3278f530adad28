"""The commands `elasticast-make-shards`, `elasticast-train` and `elasticast-evaluate` (also run as
`python jobs/<name>.py`). Each parses its flags before importing torch or Ray, so `--help` and
flag errors come at once."""

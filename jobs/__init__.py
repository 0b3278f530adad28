"""The commands and Ray jobs: `make_shards` (audio -> shard set, through `shards.build`), `train`
(the Ray Train driver) with `train_worker` (each rank's loop), and `evaluate`. Installed as
`elasticast-make-shards`, `elasticast-train` and `elasticast-evaluate`, or run as
`python jobs/<name>.py`. Each parses its flags before importing torch or Ray, so `--help` and
flag errors come at once. `ray_session` is the one way into Ray (an explicit address, Ray's own
output off unless `--verbose`); `console` carries the workers' lines to the driver. The top of the one-way import chain: shards -> loaders -> elasticast -> jobs."""

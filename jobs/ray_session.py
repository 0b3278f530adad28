"""Our one way into Ray: an explicit address, and Ray's own output off unless asked for.

The address is the one given (`--address`), else `RAY_ADDRESS`, else a new local instance of our
own (`address="local"`); never Ray's guess among the instances on the machine, so another Ray
there changes nothing. Ray's helpers in our workers look the cluster up again by themselves (Ray
Train's placement-group cleaner asks the state API, which the dashboard serves), so the address
goes to them too, in the job's environment: `RAY_ADDRESS` for a cluster, and for our local
instance (started with its dashboard when `dashboard`) the dashboard's URL, on a port chosen here
(the instance's own address is known only once it runs).

Quiet (the default): Ray's driver logs below ERROR, its workers' output and the errors the
cluster relays to the driver (the raylet's "A worker died ...", which `log_to_driver` does not
cover) stay off the terminal (they are in Ray's log folder); our commands print their own lines,
a failed attempt's cause among them. `verbose` shows all of Ray's.
"""

from __future__ import annotations

import logging
import os
import socket

LOCAL_HOST = "127.0.0.1"


def connect(
    address: str | None = None, *, verbose: bool = False, num_cpus: int | None = None, dashboard: bool = False
) -> None:
    """Join the cluster at `address` (else RAY_ADDRESS) or start a local instance; once per process.
    `dashboard`: a local instance serves the state API (Ray Train needs it; Ray Data does not)."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    options: dict = {
        "log_to_driver": verbose,
        "logging_level": logging.INFO if verbose else logging.ERROR,
    }
    if address:
        env = {"RAY_ADDRESS": address}
        options.update(address=address)
    elif dashboard:
        port = free_port()
        env = {"RAY_API_SERVER_ADDRESS": f"http://{LOCAL_HOST}:{port}"}
        options.update(
            address="local", num_cpus=num_cpus, include_dashboard=True, dashboard_host=LOCAL_HOST, dashboard_port=port
        )
    else:
        env = {}
        options.update(address="local", num_cpus=num_cpus, include_dashboard=False)
    ray.init(runtime_env={"env_vars": env}, **options)
    if not verbose:
        mute_relayed_errors()


def mute_relayed_errors() -> None:
    """Stop this driver printing what the cluster relays to it. Ray has no public switch for the
    relayed errors: this is our one use of its private API, a module flag that its printer of
    worker output reads (tests/test_layout.py fails if Ray renames it)."""
    import ray._private.worker as ray_worker

    ray_worker._worker_logs_enabled = False


def free_port() -> int:
    """A TCP port nothing listens on now (the OS's pick)."""
    with socket.socket() as probe:
        probe.bind((LOCAL_HOST, 0))
        return probe.getsockname()[1]

"""`jobs.console.relay`: the workers' own lines reach the driver's terminal, all of them and in
order, before the run's block ends; a queue lost mid-run is said once and hangs nothing."""

from __future__ import annotations

from jobs.console import Console, relay


def test_every_line_a_task_says_is_printed_in_order_before_the_block_ends(ray_local, capfd):
    @ray_local.remote(num_cpus=0)
    def worker(queue, lines: int) -> None:
        console = Console(queue)
        for i in range(lines):
            console.say(f"line {i}", error=i % 3 == 0)

    with relay() as queue:
        ray_local.get(worker.remote(queue, 40))
        queue.put_nowait_batch([(False, f"queued {i}") for i in range(300)])  # still queued as the run ends
    out, err = capfd.readouterr()
    assert out.splitlines() == [f"line {i}" for i in range(40) if i % 3] + [f"queued {i}" for i in range(300)]
    assert err.splitlines() == [f"line {i}" for i in range(0, 40, 3)]


def test_a_queue_killed_mid_run_is_said_once_and_the_block_still_ends(ray_local, capfd):
    with relay() as queue:
        queue.put((False, "before"))
        ray_local.kill(queue.actor, no_restart=True)
    out, err = capfd.readouterr()
    [warning] = [line for line in err.splitlines() if line.startswith("WARNING")]
    assert warning.startswith("WARNING: the workers' lines are no longer printed: ")
    assert out.splitlines() in ([], ["before"])  # the pump may or may not have taken it before the kill

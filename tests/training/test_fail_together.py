"""FailTogether on a real two-process gloo group: an error in one process's own work (as in the kNN monitor,
which only the main process runs) ends the other, which is blocked in a collective that will never complete,
with exit status 2 in bounded time; two processes failing at once print one error between them."""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import time

import pytest

pytestmark = pytest.mark.slow

GRACE_S = 1.0  # the watcher's grace for this test (10 s in a run), so the test stays short


def _member(rank: int, port: int, scenario: str, results) -> None:  # runs in a spawned process
    import datetime

    import torch.distributed as dist

    import synthkit.distributed as sd
    from synthkit.errors import ShardError

    sd.FAILURE_GRACE_S = GRACE_S
    store = dist.TCPStore("127.0.0.1", port, 2, rank == 0, timeout=datetime.timedelta(seconds=60))
    dist.init_process_group("gloo", store=store, rank=rank, world_size=2)
    dist.barrier()  # both fully joined before anything fails
    try:
        with sd.FailTogether() as team:
            team.watch()
            if scenario == "both" or rank == 0:
                raise ShardError(f"process {rank}'s own work failed")
            dist.barrier()  # process 1: waits for a process that will never come
    except sd.PeerFailedError as e:
        results.put((rank, "peer", str(e)))
        results.close()
        results.join_thread()  # the queue's feeder thread has written it before the process ends
        os._exit(3)
    except ShardError as e:
        results.put((rank, "own", str(e)))
        results.close()
        results.join_thread()
        # main-only: stays alive (a slow teardown), process 1 must not wait for it; both: keeps the store
        # (process 0 hosts it here; torchrun's agent does in a launch) until the other has asked it
        time.sleep(60 if scenario == "main-only" else 3)
        os._exit(4)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(scenario: str) -> tuple[list, dict[int, int | None], float]:
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_member, args=(rank, port, scenario, results)) for rank in range(2)]
    started = time.monotonic()
    for p in procs:
        p.start()
    procs[1].join(timeout=120)
    took = time.monotonic() - started
    procs[0].join(timeout=5 if scenario == "main-only" else 120)
    codes = {rank: p.exitcode for rank, p in enumerate(procs)}
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    got = []
    while not results.empty():
        got.append(results.get())
    return sorted(got), codes, took


def test_an_error_in_the_main_process_own_work_ends_the_waiting_process() -> None:
    got, codes, took = _run("main-only")
    # process 0 met the error and is still alive (tearing down slowly); process 1, blocked in a barrier,
    # saw the failure through the store and ended itself with status 2, without an error of its own
    assert got == [(0, "own", "process 0's own work failed")]
    assert codes[1] == 2
    assert took < 60  # start-up (spawn, import torch) + poll + GRACE_S; without it: forever


def test_two_processes_failing_at_once_report_one_error() -> None:
    got, codes, _ = _run("both")
    kinds = sorted(kind for _, kind, _ in got)
    assert kinds == ["own", "peer"], got  # one prints its error, the other stays quiet
    peer = next(message for _, kind, message in got if kind == "peer")
    owner = next(rank for rank, kind, _ in got if kind == "own")
    assert peer == f"process {owner} failed first"
    assert sorted(codes.values()) == [3, 4]

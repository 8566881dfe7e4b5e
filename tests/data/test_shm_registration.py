"""Two runs that open their datasets at the same moment on one machine both get shared memory of their own."""

import json
import os
import subprocess
import sys
import time

from helpers import free_port

# A rank of a two-rank job opening one prepared stream once every rank of both jobs is ready (argv[3]: its ready
# file; argv[4]: the go file). Each of streaming's scans for a free shared-memory prefix is slowed down, as a slow
# rank or a loaded machine does, which holds the window between a run's scan and its leader's create open long
# enough for the other run to scan the same free number.
RANK = """
import json, os, sys, time
import streaming.base.shared.prefix as prefix
import torch.distributed as dist
scan = prefix._check_and_find
def slow_scan(*args, **kwargs):
    found = scan(*args, **kwargs)
    time.sleep(0.3)
    return found
prefix._check_and_find = slow_scan
dist.init_process_group("gloo")
from bertforge.data.config import DataConfig, StreamConfig
from bertforge.data.loader import open_stream_dataset
open(sys.argv[3], "w").close()
while not os.path.exists(sys.argv[4]):
    time.sleep(0.01)
dataset = open_stream_dataset("code", DataConfig(tokenizer=sys.argv[1], streams={"code": StreamConfig(local=sys.argv[2])}))
print(json.dumps({"prefix": dataset._shm_prefix_int, "samples": dataset.num_samples}), flush=True)
dist.barrier()
"""


def test_two_runs_opening_datasets_at_once_get_separate_shared_memory(tmp_path, sample_data):
    """Without the registration lock both leaders scan prefix N free and the second to create it dies with
    FileExistsError (this test failed so before the lock)."""
    jobs, go = [], tmp_path / "go"
    for job in range(2):
        port = free_port()
        jobs.append([subprocess.Popen(
            [sys.executable, "-c", RANK, sample_data["tokenizer"], str(sample_data["mds"] / "code"),
             str(tmp_path / f"ready-{job}-{rank}"), str(go)],
            env=dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                     MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)])
    deadline = time.time() + 300
    while len(list(tmp_path.glob("ready-*"))) < 4 and time.time() < deadline:
        time.sleep(0.05)
    go.touch()
    results = [[rank.communicate(timeout=300) for rank in job] for job in jobs]
    for job, outputs in zip(jobs, results):
        for rank, (out, err) in zip(job, outputs):
            assert rank.returncode == 0, err[-3000:]
    opened = [[json.loads(out) for out, _ in outputs] for outputs in results]
    for job in opened:
        assert job[0] == job[1] and job[0]["samples"] > 0  # both ranks of a run attach to its leader's block

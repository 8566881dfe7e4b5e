"""`bertforge slurm` against a real Slurm cluster (munged, slurmctld and two slurmd nodes on this machine).

Without Slurm installed (or not as root, which slurmd needs) the cluster tests skip with the reason; under CI
(CI=true) that is a failure, since .ci/run installs the packages.
"""

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import read_metrics, run_config, tree_bytes
from slurm_cluster import SlurmCluster, missing_binaries

BERTFORGE = str(Path(sys.executable).with_name("bertforge"))
STEPS = 16
TWO_NODE = ("data.pack_across_ranks=true", "data.micro_batch_size=1")


def _require_slurm() -> None:
    missing = missing_binaries()
    if missing:
        reason = (f"Slurm is not installed (no {', '.join(missing)}); `apt-get install slurmctld slurmd "
                  f"slurm-client munge` provides it")
    elif os.geteuid() != 0:
        reason = "the test cluster's slurmd daemons must run as root"
    else:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the Slurm tests: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    _require_slurm()
    slurm = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        slurm.start()
        yield slurm
    finally:
        slurm.stop()


def _job_config(tmp_path: Path, sample_data: dict, name: str, parallelism: str = "fsdp2") -> Path:
    """FSDP2 (or DDP) over gloo, global batch 4 of 256-token rows, W&B offline; no periodic checkpoint before the
    end, so a checkpoint mid-run can only come from the signal."""
    return run_config(tmp_path, sample_data, name, parallelism=parallelism, max_duration=f"{STEPS * 1024}tok",
                      optimizer={"name": "adamw", "lr": 2e-3}, checkpoint={"interval": "1000ba", "keep": -1},
                      wandb={"enabled": True, "project": "bertforge-tests"}, precision="fp32")


def _slurm(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([BERTFORGE, "slurm", *args], capture_output=True, text=True, timeout=300, env=env)


def _submit(cluster: SlurmCluster, config: Path, *extra: str) -> str:
    result = _slurm(str(config), "--nodes", "2", "--submit", "--", *TWO_NODE, *extra,
                    env=cluster.env | {"WANDB_MODE": "offline"})
    assert result.returncode == 0, result.stderr + cluster.logs()
    return result.stdout.strip().splitlines()[-1].removeprefix("submitted job ")


def _losses(folder: Path) -> list[float]:
    return [row["loss"] for _, row in sorted(read_metrics(folder).items())]


def _job_log(folder: Path, job_id: str) -> str:
    return (folder / "slurm" / f"slurm-{job_id}.out").read_text()


@pytest.mark.command("slurm")
def test_rendered_script_for_a_gpu_cluster(tmp_path, sample_data):
    """No cluster needed: the script is printed and saved next to the run, with the #SBATCH options, one task per
    GPU, the signal ahead of the time limit, the requeue, the overrides, and it is valid bash."""
    config = run_config(tmp_path, sample_data, "gpu-run", global_batch_size=64)
    result = _slurm(str(config), "--nodes", "4", "--gpus-per-node", "8", "--partition", "gpu", "--time",
                    "24:00:00", "--account", "lab", "--cpus-per-task", "12", "--after", "1234", "--",
                    "optimizer.lr=1e-3")
    assert result.returncode == 0, result.stderr
    saved = tmp_path / "gpu-run" / "slurm" / "gpu-run.sbatch"
    assert saved.read_text() == result.stdout
    for line in ("#SBATCH --job-name=gpu-run", "#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=8",
                 "#SBATCH --gpus-per-node=8", "#SBATCH --partition=gpu", "#SBATCH --time=24:00:00",
                 "#SBATCH --account=lab", "#SBATCH --cpus-per-task=12", "#SBATCH --signal=USR1@300",
                 "#SBATCH --requeue", "#SBATCH --dependency=afterok:1234",
                 f"#SBATCH --output={tmp_path / 'gpu-run' / 'slurm' / 'slurm-%j.out'}"):
        assert line in result.stdout.splitlines(), line
    assert f"-m bertforge.train {config} optimizer.lr=1e-3" in result.stdout
    assert "{{" not in result.stdout.split("#SBATCH")[-1]
    assert subprocess.run(["bash", "-n", str(saved)]).returncode == 0

    # 4 x 8 ranks cannot split a global batch of 8 rows: refused before anything is written.
    small = run_config(tmp_path, sample_data, "small-batch", global_batch_size=8)
    result = _slurm(str(small), "--nodes", "4", "--gpus-per-node", "8")
    assert result.returncode == 2 and "global_batch_size" in result.stderr and "32" in result.stderr
    assert not (tmp_path / "small-batch" / "slurm").exists()


def test_missing_config_is_refused_before_submission(tmp_path):
    result = _slurm(str(tmp_path / "nope.yaml"), "--nodes", "2", "--submit")
    assert result.returncode == 2 and "nope.yaml" in result.stderr


def test_more_nodes_or_gpus_than_the_partition_has(tmp_path, sample_data, cluster):
    config = run_config(tmp_path, sample_data, "too-big")
    for args, message in ((("--nodes", "4"), "more than partition 'debug' has (2)"),
                          (("--nodes", "1", "--partition", "gpu"), "does not exist; partitions: debug"),
                          (("--nodes", "1", "--gpus-per-node", "1"), "--gpus-per-node 1 is more than")):
        result = _slurm(str(config), *args, "--submit", env=cluster.env)
        assert result.returncode == 2 and message in result.stderr, result.stderr
    queue = subprocess.run(["squeue", "-h"], env=cluster.env, capture_output=True, text=True, check=True)
    assert queue.stdout.strip() == ""


@pytest.fixture(scope="module")
def whole_job(tmp_path_factory, sample_data, cluster) -> dict:
    """A single-process run and an uninterrupted 2-node job (one CPU rank per node, FSDP2 over gloo), both with
    the same global batch of 4 rows."""
    root = tmp_path_factory.mktemp("slurm-runs")
    single = run_config(root, sample_data, "single", max_duration=f"{STEPS * 1024}tok",
                        optimizer={"name": "adamw", "lr": 2e-3}, precision="fp32")
    result = subprocess.run([BERTFORGE, "train", str(single), "data.pack_across_ranks=true",
                             "data.micro_batch_size=2"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    config = _job_config(root, sample_data, "whole")
    job = _submit(cluster, config)
    return {"root": root, "config": config, "job": job, "info": cluster.wait_for_job(job, timeout=600)}


def _signal_when_training(cluster: SlurmCluster, job: str, metrics: Path, rows: int) -> None:
    """SIGUSR1 to the job's ranks, as Slurm sends before a time limit, once it has logged ``rows`` steps."""
    deadline = time.time() + 300
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= rows):
        assert time.time() < deadline and cluster.job(job)["JobState"] in ("PENDING", "RUNNING"), cluster.job(job)
        time.sleep(0.5)
    subprocess.run(["scancel", "--signal=USR1", job], env=cluster.env, check=True)


def _check_requeued_once(cluster: SlurmCluster, job: str, folder: Path, steps: int) -> int:
    """The job checkpointed at the signal, requeued, and finished; every step was logged exactly once. Returns
    the step it stopped after."""
    info = cluster.wait_for_job(job, timeout=600)
    log = _job_log(folder, job)
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", (info, log)
    assert "received SIGUSR1: stopping after batch" in log and "requeueing job" in log
    stopped_at = int(log.split("stopping after batch ")[1].split()[0])
    assert 1 <= stopped_at < steps
    # No periodic checkpoint before the end: the one mid-run checkpoint is the signal's.
    assert {int(p.name.split("-ba")[1].split("-")[0].split(".")[0]) for p in folder.glob("ep0-ba*")} == \
        {stopped_at, steps}
    rows = [line for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert len(rows) == steps and sorted(read_metrics(folder)) == list(range(1, steps + 1))
    attempts = sorted(folder.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(attempts) == 2 and attempts[0].name == attempts[1].name  # the same W&B run id after the requeue
    return stopped_at


@pytest.mark.slow
def test_two_node_job_matches_one_machine(whole_job):
    root = whole_job["root"]
    assert whole_job["info"]["JobState"] == "COMPLETED", (whole_job["info"], _job_log(root / "whole", whole_job["job"]))
    assert whole_job["info"]["NumNodes"] == "2" and whole_job["info"]["NodeList"] == "n[1-2]"
    losses = _losses(root / "whole")
    assert len(losses) == STEPS and losses[-1] < losses[0] - 0.5
    assert losses == pytest.approx(_losses(root / "single"), abs=2e-5)
    assert sorted(p.name for p in (root / "whole" / f"ep0-ba{STEPS}").iterdir()) == \
        [".metadata", "__0_0.distcp", "__1_0.distcp"]


@pytest.mark.slow
def test_preempted_job_checkpoints_requeues_and_resumes_exactly(tmp_path, sample_data, cluster, whole_job):
    """The same job as the uninterrupted one, signalled mid-run: it ends with the same tokens and the same loss at
    every step, none repeated, in one W&B run."""
    job = _submit(cluster, _job_config(tmp_path, sample_data, "preempted"))
    _signal_when_training(cluster, job, tmp_path / "preempted" / "metrics.jsonl", rows=3)
    _check_requeued_once(cluster, job, tmp_path / "preempted", STEPS)
    whole = whole_job["root"] / "whole"
    assert _losses(tmp_path / "preempted") == pytest.approx(_losses(whole), abs=1e-6)
    assert read_metrics(tmp_path / "preempted")[STEPS]["tokens"] == read_metrics(whole)[STEPS]["tokens"]


@pytest.mark.slow
def test_preempted_ddp_job_on_a_shared_folder_resumes_exactly(tmp_path, sample_data, cluster, whole_job):
    """The default parallelism on two nodes that share the save folder (as a cluster's filesystem is): Composer's
    autoresume, whose per-node signal file in the save folder gets one name on both nodes, killed this job at its
    start; bertforge's own resume does not use it. Preempted and requeued, the job finishes with the single
    process's losses."""
    job = _submit(cluster, _job_config(tmp_path, sample_data, "ddp", parallelism="ddp"))
    _signal_when_training(cluster, job, tmp_path / "ddp" / "metrics.jsonl", rows=3)
    _check_requeued_once(cluster, job, tmp_path / "ddp", STEPS)
    assert _losses(tmp_path / "ddp") == pytest.approx(_losses(whole_job["root"] / "single"), abs=2e-5)


@pytest.mark.slow
def test_next_phase_starts_from_its_predecessor_and_resumes_itself(tmp_path, sample_data, cluster, whole_job):
    """A next phase submitted with --after starts from the finished phase's final checkpoint (there is no other:
    the predecessor saved only at its end), and after a requeue resumes from its own checkpoint, not from the
    predecessor again."""
    steps = 6
    config = run_config(tmp_path, sample_data, "phase2", parallelism="fsdp2", max_duration=f"{steps * 1024}tok",
                        optimizer={"name": "adamw", "lr": 1e-3}, checkpoint={"interval": "1000ba", "keep": -1},
                        wandb={"enabled": True, "project": "bertforge-tests"},
                        phase={"after": str(whole_job["config"]), "load": "weights"})
    result = _slurm(str(config), "--nodes", "2", "--after", whole_job["job"], "--submit", "--", *TWO_NODE,
                    env=cluster.env | {"WANDB_MODE": "offline"})
    assert result.returncode == 0, result.stderr
    assert f"#SBATCH --dependency=afterok:{whole_job['job']}" in result.stdout
    job = result.stdout.strip().splitlines()[-1].removeprefix("submitted job ")
    _signal_when_training(cluster, job, tmp_path / "phase2" / "metrics.jsonl", rows=2)
    _check_requeued_once(cluster, job, tmp_path / "phase2", steps)
    first_phase = _losses(whole_job["root"] / "whole")
    assert _losses(tmp_path / "phase2")[0] < first_phase[0] - 0.5  # it started from the trained weights


def test_slurm_task_environment_becomes_composers():
    from bertforge.errors import ConfigError
    from bertforge.train.launcher import adopt_launcher_environment

    env = {"SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NODEID": "2", "SLURM_NTASKS": "8",
           "MASTER_ADDR": "10.0.0.1", "WORLD_SIZE": "8"}
    adopt_launcher_environment(env)
    assert (env["RANK"], env["LOCAL_RANK"], env["NODE_RANK"]) == ("5", "1", "2")
    torchrun = {"GROUP_RANK": "3", "RANK": "7"}
    adopt_launcher_environment(torchrun)
    assert torchrun["NODE_RANK"] == "3"
    with pytest.raises(ConfigError, match="Slurm started 4 tasks but WORLD_SIZE is 8"):
        adopt_launcher_environment({k: v for k, v in env.items() if k != "RANK"} | {"SLURM_NTASKS": "4"})


@pytest.mark.slow
def test_usr1_outside_slurm_checkpoints_exits_75_and_the_same_command_resumes(tmp_path, sample_data):
    """A stopped run does not export; the resumed one finishes every step once and exports."""
    config = run_config(tmp_path, sample_data, "usr1", max_duration="16384tok", checkpoint={"interval": "1000ba"},
                        export_dir=str(tmp_path / "hf"))
    command = [BERTFORGE, "train", str(config)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "usr1" / "metrics.jsonl"
    deadline = time.time() + 300
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        assert time.time() < deadline and process.poll() is None, process.communicate()
        time.sleep(0.2)
    process.send_signal(signal.SIGUSR1)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 75, stderr[-3000:]
    assert "stopped by SIGUSR1 after batch" in stderr and "the same command resumes the run" in stderr
    stopped_at = int(stderr.split("after batch ")[1].split(",")[0])
    assert (tmp_path / "usr1" / f"ep0-ba{stopped_at}-rank0.pt").is_file() and not (tmp_path / "hf").exists()
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = metrics.read_text().splitlines()
    assert len(rows) == 16 and sorted(read_metrics(tmp_path / "usr1")) == list(range(1, 17))
    assert (tmp_path / "hf" / "config.json").is_file()


def _catches(pid: int, sig: signal.Signals) -> bool:
    """Whether the process has a handler for ``sig`` (the SigCgt mask in /proc, bit signum - 1)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    return False


@pytest.mark.slow
def test_usr1_while_torch_is_still_importing_stops_at_the_first_step(tmp_path, sample_data):
    """A signal during start-up (a job that starts close to its time limit) must not kill the rank: it is
    recorded and honoured at the first step boundary, with a checkpoint and the requeue exit code."""
    config = run_config(tmp_path, sample_data, "early", max_duration="16384tok", checkpoint={"interval": "1000ba"})
    process = subprocess.Popen([BERTFORGE, "train", str(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.time() + 60
    while not _catches(process.pid, signal.SIGUSR1):
        assert time.time() < deadline and process.poll() is None, process.communicate()
        time.sleep(0.002)
    assert "libtorch" not in Path(f"/proc/{process.pid}/maps").read_text(), \
        "the SIGUSR1 handler was installed only after torch was loaded"
    process.send_signal(signal.SIGUSR1)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 75, stderr[-3000:]
    assert "stopped by SIGUSR1 after batch 1," in stderr
    assert sorted(p.name for p in (tmp_path / "early").glob("ep*-ba*-rank0.pt")) == ["ep0-ba1-rank0.pt"]


def _prep_slurm(recipe: Path, cluster: SlurmCluster) -> tuple[str, str, str]:
    """`bertforge prep --slurm --submit` over 2 nodes x 1 task; returns its output, the array and finishing job."""
    result = subprocess.run([BERTFORGE, "prep", str(recipe), "--slurm", "--nodes", "2", "--tasks-per-node", "1",
                             "--submit"], capture_output=True, text=True, timeout=300, env=cluster.env)
    assert result.returncode == 0, result.stderr + cluster.logs()
    array, finish = result.stdout.strip().splitlines()[-1].removeprefix("submitted array job ").split(
        " and finishing job ")
    return result.stdout, array, finish


def test_prep_over_a_slurm_array_matches_a_local_prep_after_a_task_is_killed(tmp_path, sample_data, cluster):
    """Two array tasks share the recipe's units; one is cancelled at once, so the finishing step names what it
    left and fails; the same command then resubmits that task alone, and the result is the local prep's bytes."""
    import yaml

    recipe = yaml.safe_load(sample_data["recipe"].read_text())
    recipe.update(out_dir=str(tmp_path / "mds"), workers=1)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))

    out, array, finish = _prep_slurm(path, cluster)
    assert "2 of 2 array task(s) have units to prepare (0,1)" in out
    subprocess.run(["scancel", f"{array}_1"], env=cluster.env, check=True)  # running or still pending
    assert cluster.wait_for_job(finish, timeout=300)["JobState"] == "FAILED"
    log = (tmp_path / "mds" / "slurm" / f"prep-finish-{finish}.out").read_text()
    assert "are not finished" in log and "--submit` again" in log, log
    assert not (tmp_path / "mds" / "web" / "index.json").exists()

    out, array, finish = _prep_slurm(path, cluster)
    assert "1 of 2 array task(s) have units to prepare (1)" in out, out
    assert cluster.wait_for_job(finish, timeout=300)["JobState"] == "COMPLETED", cluster.logs()
    for source in sample_data["stats"]:
        local, spread = tree_bytes(sample_data["mds"] / source), tree_bytes(tmp_path / "mds" / source)
        assert spread.keys() == local.keys()
        assert {n: hashlib.sha256(b).hexdigest() for n, b in spread.items()} == \
               {n: hashlib.sha256(b).hexdigest() for n, b in local.items()}

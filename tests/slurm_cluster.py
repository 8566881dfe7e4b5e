"""A real two-node Slurm cluster on this machine, for the SLURM tests.

munged, one slurmctld and two slurmd daemons (nodes n1 and n2, both on 127.0.0.1 with their own ports and each
with its own /dev/shm), all configured in a temporary directory and stopped afterwards. Clients find it through
``SLURM_CONF``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
NODES = ("n1", "n2")


def missing_binaries() -> list[str]:
    return [name for name in (*DAEMONS, "sbatch", "scontrol", "sinfo", "srun", "unshare")
            if shutil.which(name) is None]


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


SLURM_CONF = """\
ClusterName=bertforge-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/munge.socket,cred_expire=10
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd-%n.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/pgid
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
MinJobAge=3600
KillWait=20
SlurmctldTimeout=30
SlurmdTimeout=30
{nodes}
PartitionName=debug Nodes={node_names} Default=YES MaxTime=INFINITE State=UP
"""


@dataclass
class SlurmCluster:
    root: Path
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.root / "slurm.conf")}

    def start(self, timeout: float = 60.0) -> None:
        munge = self.root / "munge"
        munge.mkdir(parents=True, mode=0o700)
        key = munge / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        (self.root / "state").mkdir()
        self._spawn(["munged", "--foreground", "--force", f"--socket={munge}/munge.socket", f"--key-file={key}",
                     f"--pid-file={munge}/munged.pid", f"--log-file={munge}/munged.log",
                     f"--seed-file={munge}/munged.seed"], "munged")
        self._wait(lambda: (munge / "munge.socket").exists(), timeout, "munged did not create its socket")
        ctld_port, *node_ports = _free_ports(1 + len(NODES))
        nodes = "\n".join(f"NodeName={name} NodeHostname={socket.gethostname()} NodeAddr=127.0.0.1 Port={port} "
                          f"CPUs=1 RealMemory=4000 State=UNKNOWN" for name, port in zip(NODES, node_ports))
        (self.root / "slurm.conf").write_text(SLURM_CONF.format(
            host=socket.gethostname(), ctld_port=ctld_port, root=self.root, nodes=nodes, node_names=",".join(NODES)))
        self._spawn(["slurmctld", "-D", "-i"], "slurmctld")
        for name in NODES:
            (self.root / "spool" / name).mkdir(parents=True)
            # Each node gets a /dev/shm of its own, as separate machines have: streaming's local leaders name
            # their shared memory per machine, and two nodes sharing one /dev/shm would collide.
            self._spawn(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                         f"mount -t tmpfs -o size=4g tmpfs /dev/shm && exec slurmd -D -N {name}"], f"slurmd-{name}")
        self._wait(self._nodes_idle, timeout, "the nodes did not become idle")

    def _spawn(self, command: list[str], name: str) -> None:
        log = (self.root / f"{name}.stdout").open("w")
        self.processes.append(subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                               start_new_session=True))

    def _nodes_idle(self) -> bool:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], env=self.env, capture_output=True, text=True)
        states = dict(line.split() for line in out.stdout.splitlines() if line.strip())
        return out.returncode == 0 and all(states.get(name) == "idle" for name in NODES)

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if ready():
                return
            if any(p.poll() is not None for p in self.processes):
                break
            time.sleep(0.5)
        raise RuntimeError(f"Slurm test cluster: {what}; logs in {self.root}:\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.root.glob("*.log"))
                         if p.is_file())

    def stop(self) -> None:
        subprocess.run(["scancel", "--full", "--quiet", "--user=root"], env=self.env, capture_output=True)
        for process in reversed(self.processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a dict (JobState, Restarts, ExitCode, ...)."""
        out = subprocess.run(["scontrol", "show", "job", "-o", job_id], env=self.env, capture_output=True,
                             text=True, check=True).stdout
        return dict(item.split("=", 1) for item in out.split() if "=" in item)

    def wait_for_job(self, job_id: str, timeout: float) -> dict[str, str]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            info = self.job(job_id)
            if info["JobState"] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
                return info
            time.sleep(1)
        raise TimeoutError(f"job {job_id} did not finish in {timeout:.0f} s: {self.job(job_id)}\n{self.logs()}")

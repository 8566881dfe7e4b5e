"""`bertforge slurm`: render a run's sbatch script from slurm/bertforge.sbatch, check it against the cluster,
save it next to the run and submit it; and `bertforge prep --slurm`: a data prep as an array job
(slurm/prep.sbatch) and a finishing step.

Everything that can be checked before the job waits in the queue is checked here: the run, by the same preflight
`bertforge train` runs (with the job's ranks and device), and the partition's nodes and GPUs; so a mistake costs
seconds, not a queue wait.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bertforge.atomic import write_text_atomic
from bertforge.checkpoint.run_folder import RunFolder, open_run_folder
from bertforge.data.prep import staging_folder, unfinished
from bertforge.data.recipe import load_recipe
from bertforge.errors import ConfigError
from bertforge.paths import REPO_ROOT
from bertforge.store import is_remote
from bertforge.train.config import load_train_config
from bertforge.train.preflight import preflight
from bertforge.train.signals import REQUEUE_EXIT_CODE

TEMPLATE = REPO_ROOT / "slurm" / "bertforge.sbatch"
PREP_TEMPLATE = REPO_ROOT / "slurm" / "prep.sbatch"
_FIELD = re.compile(r"{{(\w+)}}")


_SBATCH_VALUE = re.compile(r"^[\w.:,@+=/%-]+$")


def check_sbatch_values(values: dict[str, str | int | None]) -> None:
    """Refuse a value that an ``#SBATCH`` line cannot hold as it is: a newline would end the directive and run the
    rest as a command when the job runs, a space or ``#`` would cut or comment it."""
    for option, value in values.items():
        if value is not None and not _SBATCH_VALUE.match(str(value)):
            raise ConfigError(f"{option} {str(value)!r}: an #SBATCH value may hold only letters, digits and "
                              f". : , @ + = - / % _ (no spaces, newlines or other control characters)")


@dataclass
class SlurmJob:
    nodes: int
    """Nodes to allocate; one launcher task per rank runs on each."""
    gpus_per_node: int = 0
    """GPUs per node; each gets one rank. 0: CPU nodes, with ranks_per_node ranks (gloo)."""
    ranks_per_node: int | None = None
    """Trainer processes per node; default: gpus_per_node, or 1 on CPU nodes."""
    partition: str | None = None
    """Slurm partition; default: the cluster's default partition."""
    time: str | None = None
    """Time limit (Slurm syntax: minutes, HH:MM:SS, D-HH:MM:SS); the job checkpoints and requeues before it."""
    account: str | None = None
    """Account to charge."""
    cpus_per_task: int | None = None
    """CPUs for each rank (data loading, tokenization of the next batch)."""
    signal_seconds: int = 300
    """Ask Slurm for SIGUSR1 this long before the time limit: enough to finish a step and write a checkpoint."""
    after: str | None = None
    """Start only after this job completes successfully (the previous phase of a chain)."""

    def __post_init__(self) -> None:
        if self.nodes < 1:
            raise ConfigError(f"--nodes must be at least 1, not {self.nodes}")
        if self.gpus_per_node < 0:
            raise ConfigError(f"--gpus-per-node must be 0 (CPU nodes) or more, not {self.gpus_per_node}")
        if self.ranks_per_node is None:
            self.ranks_per_node = self.gpus_per_node or 1
        if self.gpus_per_node and self.ranks_per_node != self.gpus_per_node:
            raise ConfigError(f"--ranks-per-node {self.ranks_per_node} differs from --gpus-per-node "
                              f"{self.gpus_per_node}; on GPU nodes each GPU runs one rank")
        if self.ranks_per_node < 1:
            raise ConfigError(f"--ranks-per-node must be at least 1, not {self.ranks_per_node}")
        check_sbatch_values({"--partition": self.partition, "--time": self.time, "--account": self.account,
                             "--after": self.after})

    @property
    def world_size(self) -> int:
        return self.nodes * self.ranks_per_node


def sbatch_options(job: SlurmJob, run_name: str, log: Path) -> list[str]:
    check_sbatch_values({"run_name": run_name, "the log path (under save_folder)": str(log)})
    options = [f"--job-name={run_name}", f"--nodes={job.nodes}", f"--ntasks-per-node={job.ranks_per_node}",
               f"--signal=USR1@{job.signal_seconds}", "--requeue", "--open-mode=append", f"--output={log}"]
    if job.gpus_per_node:
        options.append(f"--gpus-per-node={job.gpus_per_node}")
    for flag, value in (("partition", job.partition), ("time", job.time), ("account", job.account),
                        ("cpus-per-task", job.cpus_per_task)):
        if value is not None:
            options.append(f"--{flag}={value}")
    if job.after:
        options.append(f"--dependency=afterok:{job.after}")
    return [f"#SBATCH {option}" for option in options]


def render_script(config_path: str | Path, overrides: list[str], job: SlurmJob, run_name: str, folder: RunFolder,
                  workdir: Path, template: Path = TEMPLATE) -> str:
    command = [sys.executable, "-m", "bertforge.train", str(Path(config_path).resolve()), *overrides]
    fields = {
        "sbatch_options": "\n".join(sbatch_options(job, run_name, folder.slurm / "slurm-%j.out")),
        "workdir": shlex.quote(str(workdir)),
        "ranks_per_node": str(job.ranks_per_node),
        "train_command": shlex.join(command),
        "requeue_exit_code": str(REQUEUE_EXIT_CODE),
    }
    return fill_template(template, fields)


def fill_template(template: Path, fields: dict[str, str]) -> str:
    text = template.read_text()
    unknown = sorted(set(_FIELD.findall(text)) - set(fields))
    if unknown:
        raise ConfigError(f"{template}: unknown field(s) {', '.join('{{' + f + '}}' for f in unknown)}; "
                          f"the fields are {', '.join(sorted(fields))}")
    return _FIELD.sub(lambda m: fields[m.group(1)], text)


@dataclass
class PrepJob:
    """`bertforge prep --slurm`: a recipe's units spread over an array of ``nodes x tasks_per_node`` tasks."""

    nodes: int
    """Nodes' worth of array tasks."""
    tasks_per_node: int = 1
    """Array tasks per node; each runs the recipe's ``workers`` processes, so ask for tasks_per_node x workers
    <= cores per node."""
    partition: str | None = None
    time: str | None = None
    account: str | None = None

    def __post_init__(self) -> None:
        if self.nodes < 1 or self.tasks_per_node < 1:
            raise ConfigError(f"--nodes and --tasks-per-node must be at least 1, not {self.nodes} and "
                              f"{self.tasks_per_node}")
        check_sbatch_values({"--partition": self.partition, "--time": self.time, "--account": self.account})

    @property
    def shares(self) -> int:
        return self.nodes * self.tasks_per_node


def render_prep_scripts(recipe_path: str | Path, overrides: list[str], job: PrepJob, workers: int,
                        tasks: list[int], folder: Path, workdir: Path,
                        template: Path = PREP_TEMPLATE) -> tuple[str, str]:
    """The array script (one task per share in ``tasks``) and the finishing step's script."""
    name = f"prep-{Path(recipe_path).stem}"
    check_sbatch_values({"the recipe's file name": name, "the scripts' folder": str(folder)})
    command = [sys.executable, "-m", "bertforge.cli", "prep", str(Path(recipe_path).resolve()), *overrides,
               "--no-progress"]
    common = [f"--partition={job.partition}" if job.partition else "", f"--time={job.time}" if job.time else "",
              f"--account={job.account}" if job.account else ""]
    scripts = []
    for options, tail in (
            ([f"--job-name={name}", f"--array={','.join(map(str, tasks))}", "--ntasks=1",
              f"--cpus-per-task={workers}", "--requeue", f"--output={folder / 'prep-%A_%a.out'}"],
             f'--share "$SLURM_ARRAY_TASK_ID/{job.shares}"'),
            ([f"--job-name={name}-finish", "--ntasks=1", "--cpus-per-task=1",
              f"--output={folder / 'prep-finish-%j.out'}"], "--finish")):
        scripts.append(fill_template(template, {
            "sbatch_options": "\n".join(f"#SBATCH {o}" for o in [*options, *common] if o),
            "workdir": shlex.quote(str(workdir)),
            "prep_command": f"{shlex.join(command)} {tail}",
        }))
    return scripts[0], scripts[1]


def prepare_prep_job(recipe_path: str | Path, overrides: list[str], job: PrepJob, submit: bool
                     ) -> tuple[Path | None, Path, str]:
    """Check the recipe (and, to submit, the cluster), find the shares with unfinished units, write the scripts
    under the prep's slurm folder (out_dir/slurm, or ./slurm-prep/RECIPE for an out_dir in an object store);
    returns the array script (None when every unit is finished), the finishing step's script, and a line saying
    what they do."""
    recipe = load_recipe(recipe_path, overrides)
    if submit:
        check_against_cluster(SlurmJob(nodes=job.nodes, partition=job.partition))
    tasks = unfinished(recipe, job.shares)
    # The scripts and logs go where every node can write: beside a local out_dir (which the nodes must share), or
    # for an object store, under the directory the command ran in (the tasks' staging folders are node-local).
    folder = (staging_folder(recipe) / "slurm" if not is_remote(recipe.out_dir) or recipe.staging_dir
              else Path.cwd() / "slurm-prep" / Path(recipe_path).stem).resolve()
    array, finish = render_prep_scripts(recipe_path, overrides, job, recipe.workers, tasks, folder, Path.cwd())
    folder.mkdir(parents=True, exist_ok=True)
    array_path, finish_path = folder / "prep-array.sbatch", folder / "prep-finish.sbatch"
    write_text_atomic(finish_path, finish)
    if tasks:
        write_text_atomic(array_path, array)
    else:
        array_path.unlink(missing_ok=True)
    what = (f"{len(tasks)} of {job.shares} array task(s) have units to prepare ({','.join(map(str, tasks))})"
            if tasks else f"every unit of {recipe.out_dir} is prepared; only the finishing step is left")
    return (array_path if tasks else None), finish_path, what


def submit_prep(array: Path | None, finish: Path) -> tuple[str | None, str]:
    """sbatch the array, then the finishing step to start once every array task has ended (afterany: it names
    the units a failed task left, rather than waiting for ever on a dependency that cannot be met)."""
    array_id = submit(array) if array is not None else None
    finish_id = _slurm("sbatch", "--parsable", *([f"--dependency=afterany:{array_id}"] if array_id else []),
                       str(finish)).strip().split(";")[0]
    return array_id, finish_id


def _slurm(*command: str) -> str:
    if shutil.which(command[0]) is None:
        raise ConfigError(f"'{command[0]}' is not on PATH: --submit needs the Slurm client commands (run on a login "
                          f"node, or leave out --submit to only write the script)")
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise ConfigError(f"`{shlex.join(command)}` failed: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def partitions() -> dict[str, dict]:
    """Partition -> {nodes, gpus (per node, the most any node has), default}, from sinfo."""
    found: dict[str, dict] = {}
    for line in _slurm("sinfo", "-h", "-o", "%P|%D|%G").splitlines():
        name, nodes, gres = line.strip().split("|")
        default = name.endswith("*")
        name = name.rstrip("*")
        gpus = max((int(m.group(1)) for m in re.finditer(r"gpu(?::[^:,(]+)?:(\d+)", gres)), default=0)
        entry = found.setdefault(name, {"nodes": 0, "gpus": 0, "default": default})
        entry["nodes"] += int(nodes)  # one line per node state
        entry["gpus"] = max(entry["gpus"], gpus)
    return found


def check_against_cluster(job: SlurmJob) -> str:
    """The partition exists and has the nodes and GPUs asked for; returns its name."""
    found = partitions()
    if job.partition is None:
        name = next((n for n, p in found.items() if p["default"]), None)
        if name is None:
            raise ConfigError(f"the cluster has no default partition; pass --partition (one of {', '.join(found)})")
    elif job.partition not in found:
        raise ConfigError(f"--partition '{job.partition}' does not exist; partitions: {', '.join(found)}")
    else:
        name = job.partition
    if job.nodes > found[name]["nodes"]:
        raise ConfigError(f"--nodes {job.nodes} is more than partition '{name}' has ({found[name]['nodes']}); "
                          f"ask for at most {found[name]['nodes']} or pick another partition")
    if job.gpus_per_node > found[name]["gpus"]:
        raise ConfigError(f"--gpus-per-node {job.gpus_per_node} is more than the nodes of partition '{name}' have "
                          f"({found[name]['gpus']})")
    return name


def prepare_job(config_path: str | Path, overrides: list[str], job: SlurmJob, submit: bool) -> tuple[Path, str]:
    """Check the config (and, to submit, the cluster), write the script next to the run; return it and its text."""
    config = load_train_config(config_path, overrides)
    preflight(config, job.world_size, device="gpu" if job.gpus_per_node else "cpu")
    if submit:
        check_against_cluster(job)
    folder = open_run_folder(config.save_folder, config.staging_folder)
    folder.path = folder.path.resolve()
    text = render_script(config_path, overrides, job, config.run_name, folder, Path.cwd())
    script = folder.slurm / f"{config.run_name}.sbatch"
    script.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(script, text)
    return script, text


def submit(script: Path) -> str:
    """sbatch the script; returns the job id."""
    return _slurm("sbatch", "--parsable", str(script)).strip().split(";")[0]

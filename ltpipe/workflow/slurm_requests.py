"""What a Slurm job asks: each submission as the Slurm executor plugin will send it.

``Request`` is one submission (a rule's job, or a group of jobs), made from a Snakemake job by
``request_of`` with the plugin's own functions; ``submissions`` lists the jobs Snakemake will
submit. :mod:`ltpipe.workflow.slurm_fit` holds each request against the nodes.
"""

from __future__ import annotations

from dataclasses import dataclass

from ltpipe.workflow.slurm_nodes import parse_gres


@dataclass(frozen=True)
class Request:
    """One Slurm submission: which rule(s) it runs, and what it asks for."""

    rule: str
    group: str | None = None  # the Snakemake group of a group submission
    jobs: int = 1  # jobs in the submission
    cpus: int = 1
    mem_mb: int | None = None  # None: no memory request (or not known before submission)
    gpus: int = 0
    gpu_model: str | None = None
    runtime_min: int | None = None
    partition: str | None = None  # None: the cluster's default (or the plugin's choice)

    @property
    def label(self) -> str:
        if self.group is None:
            return f"rule {self.rule}"
        return f"rule {self.rule} (group {self.group}, {self.jobs} jobs per sbatch)"

    def asks(self) -> str:
        """What it asks, in words: '8 CPUs, 4000 MB, 1 GPU, 160 min'."""
        out = [_plural(self.cpus, "CPU")]
        if self.mem_mb is not None:
            out.append(f"{self.mem_mb} MB")
        if self.gpus:
            out.append(_plural(self.gpus, f"{self.gpu_model} GPU" if self.gpu_model else "GPU"))
        if self.runtime_min is not None:
            out.append(f"{self.runtime_min} min")
        return ", ".join(out)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def _int_or_none(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None  # e.g. '<TBD>': a resource known only once the job's input exists


#: the Slurm executor plugin releases whose CPU and GPU arithmetic request_of calls, and whose
#: sbatch command lines tests/test_slurm_fit.py checks it against (pyproject.toml pins the same)
PLUGIN_TESTED = ">=2.8,<2.9"


def request_of(job) -> Request:
    """The request the Slurm executor plugin will send for a Snakemake job or group job.

    CPUs and GPUs by the functions the plugin builds its sbatch line with (the jobstep
    plugin's ``get_cpu_setting``: ``cpus_per_task``, else ``cpus_per_gpu`` per GPU, else the
    job's threads; ``parse_gpu_requirements``: ``gpu`` and ``gpu_model``, or a ``gres`` naming
    gpu), memory as that line asks it (``mem_mb_per_cpu`` x CPUs, else ``mem_mb``), and
    ``runtime``. tests/test_slurm_fit.py checks the result against the plugin's own sbatch
    command line (:data:`PLUGIN_TESTED`).
    """
    from snakemake_executor_plugin_slurm.partitions import parse_gpu_requirements
    from snakemake_executor_plugin_slurm_jobstep import get_cpu_setting

    get = job.resources.get
    try:
        gpus, model = parse_gpu_requirements(job)
    except ValueError:  # a gres such as gpu:a100 (no count): Slurm reads one
        gpus, model = 0, None
    gres = str(get("gres") or "")
    if not gpus and "gpu" in gres:
        parsed = parse_gres(gres)
        gpus = sum(n for _, n in parsed) or 1
        model = next((m for m, _ in parsed if m), model)
    setting = get_cpu_setting(job, bool(gpus))  # "--cpus-per-task=N", "--cpus-per-gpu=N", ""
    count = int(setting.rpartition("=")[2]) if setting else 1
    cpus = max(1, count * gpus if "per-gpu" in setting else count)
    mem = _int_or_none(get("mem_mb"))
    per_cpu = _int_or_none(get("mem_mb_per_cpu"))
    if per_cpu:
        mem = per_cpu * cpus
    if job.is_group():
        rules = sorted({j.rule.name for j in job.jobs})
        rule, group, n = ", ".join(rules), job.groupid, len(job.jobs)
    else:
        rule, group, n = job.rule.name, None, 1
    return Request(rule=rule, group=group, jobs=n, cpus=cpus, mem_mb=mem, gpus=gpus,
                   gpu_model=model, runtime_min=_int_or_none(get("runtime")),
                   partition=str(get("slurm_partition") or "") or None)


def submissions(workflow) -> list:
    """The jobs (group jobs counted once) that Snakemake will submit: non-local needrun jobs."""
    dag = workflow.dag
    seen, out = set(), []
    for job in dag.needrun_jobs():
        job = dag.get_job_group(job) or job  # a grouped job is submitted as its group
        if job in seen or (not job.is_group() and job.is_local):
            continue
        seen.add(job)
        out.append(job)
    return out

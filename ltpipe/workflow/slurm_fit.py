"""Will Slurm ever run these jobs? Each job's request against what `sinfo` says nodes offer.

A Slurm job that asks for more CPUs, memory, GPUs or wall time than any node of its partition
offers either pends forever (squeue reason ``PartitionConfig``, ``Resources``...) or is refused by
sbatch (``Invalid generic resource``), and Snakemake waits without a word. This module refuses
such a run before the first ``sbatch``:

* ``parse_sinfo`` reads ``sinfo --all --exact --noheader --format "%P|%c|%m|%G|%l|%D"`` (one line
  per partition and node configuration) into ``Partition`` records;
* ``Request`` is one submission as the Slurm executor plugin will send it (a rule's job, or a
  group of jobs), made from a Snakemake job by ``request_of``;
* ``problems`` says, per request that no node of its partition can ever take, which rule, what it
  asks, what the largest node offers, and the setting to change;
* ``check_workflow`` is what the Snakefile's ``onstart`` hook calls on the login node when the
  executor is ``slurm``; ``python -m ltpipe slurm-check`` runs the same check and prints the table
  of requests against nodes without submitting anything (``LTPIPE_SLURM_CHECK=only``).

``LTPIPE_SLURM_CHECK=off`` skips the check (e.g. on a cluster whose nodes appear only on demand).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field

SINFO_FORMAT = "%P|%c|%m|%G|%l|%D"
SINFO_CMD = ["sinfo", "--all", "--exact", "--noheader", "--format", SINFO_FORMAT]
CHECK_ENV = "LTPIPE_SLURM_CHECK"  # "off": skip; "only": print the table and stop (slurm-check)
GPU_ENV = "LTPIPE_SLURM_GPUS"  # read by workflow/profiles/slurm/config.yaml: 0 = CPU-only cluster
PROFILE_HINT = "your Slurm profile's config.yaml"
REFUSED = "ltpipe: jobs of this Slurm run could never start; nothing was submitted:"


class SinfoError(ValueError):
    """`sinfo` output that this module cannot read; the message quotes the line."""


@dataclass(frozen=True)
class NodeKind:
    """One node configuration of a partition: CPUs, memory (MB), GPUs by model, and how many."""

    cpus: int
    mem_mb: int
    gpus: tuple[tuple[str, int], ...] = ()  # (model or "", count); "" = no model named
    count: int = 1

    @property
    def n_gpus(self) -> int:
        return sum(n for _, n in self.gpus)

    def gpus_of(self, model: str | None) -> int:
        """GPUs of this model ("" or None: any model)."""
        return sum(n for m, n in self.gpus if not model or m == model)


@dataclass
class Partition:
    """A partition: its name, whether it is the default, its time limit and its node kinds."""

    name: str
    default: bool = False
    time_limit_min: int | None = None  # None: no limit
    nodes: list[NodeKind] = field(default_factory=list)

    def largest(self, what: str) -> int:
        """The largest value of `what` (cpus, mem_mb, n_gpus) over this partition's nodes."""
        return max((getattr(n, what) for n in self.nodes), default=0)

    def gpu_models(self) -> list[str]:
        return sorted({m for n in self.nodes for m, _ in n.gpus if m})


def parse_time(text: str) -> int | None:
    """A Slurm time limit as minutes (rounded up); None for no limit.

    Forms: ``infinite``/``UNLIMITED``, ``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``,
    ``D-HH:MM:SS``.
    """
    text = text.strip()
    if text.lower() in ("infinite", "unlimited", "n/a", ""):
        return None
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not m:
        raise SinfoError(f"unreadable time limit {text!r}: expected e.g. 1-00:00:00 or infinite")
    days, a, b, c = (int(g) if g is not None else None for g in m.groups())
    if days is not None:  # D-HH[:MM[:SS]]
        seconds = days * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    elif c is not None:  # HH:MM:SS
        seconds = a * 3600 + b * 60 + c
    elif b is not None:  # MM:SS
        seconds = a * 60 + b
    else:  # MM
        seconds = a * 60
    return -(-seconds // 60)


def parse_gres(text: str) -> tuple[tuple[str, int], ...]:
    """The GPUs in a sinfo GRES field: ``(null)``, ``gpu:2``, ``gpu:a100:4(S:0-1)``,
    ``gpu:a100:2,gpu:v100:2,mps:100`` -> ``(("a100", 2), ("v100", 2))``."""
    out: dict[str, int] = {}
    # split on commas outside parentheses: "gpu:a100:4(S:0,1)" is one entry
    for entry in re.split(r",(?![^()]*\))", text.strip()):
        entry = re.sub(r"\(.*?\)", "", entry).strip()
        parts = entry.split(":")
        if parts[0] != "gpu":
            continue
        if len(parts) == 1:
            model, count = "", "1"
        elif len(parts) == 2:
            model, count = ("", parts[1]) if parts[1].isdigit() else (parts[1], "1")
        else:
            model, count = parts[1], parts[2]
        if not count.isdigit():
            raise SinfoError(f"unreadable GPU count in GRES {text!r}")
        out[model] = out.get(model, 0) + int(count)
    return tuple(sorted(out.items()))


def _number(text: str, what: str, line: str) -> int:
    m = re.fullmatch(r"(\d+)\+?", text.strip())
    if not m:
        raise SinfoError(f"unreadable {what} {text!r} in sinfo line {line!r}")
    return int(m.group(1))


def parse_sinfo(text: str) -> dict[str, Partition]:
    """Partitions by name from the output of ``SINFO_CMD`` (a ``*`` marks the default one)."""
    parts: dict[str, Partition] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = line.strip().split("|")
        if len(fields) != 6:
            raise SinfoError(f"sinfo line {line!r} does not have the 6 fields of {SINFO_FORMAT!r}")
        name, cpus, mem, gres, limit, count = fields
        default = name.endswith("*")
        name = name.rstrip("*")
        part = parts.setdefault(name, Partition(name, default, parse_time(limit)))
        part.default = part.default or default
        part.nodes.append(NodeKind(_number(cpus, "CPU count", line), _number(mem, "memory", line),
                                   parse_gres(gres), _number(count, "node count", line)))
    return parts


def run_sinfo(env: dict[str, str] | None = None) -> str:
    """The text of ``SINFO_CMD``; OSError or CalledProcessError when sinfo cannot answer."""
    proc = subprocess.run(SINFO_CMD, capture_output=True, text=True, env=env, timeout=60,
                          check=True)
    return proc.stdout


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


def _fits(node: NodeKind, req: Request) -> bool:
    return (node.cpus >= req.cpus and (req.mem_mb is None or node.mem_mb >= req.mem_mb)
            and node.gpus_of(req.gpu_model) >= req.gpus)


def target_partitions(req: Request, parts: dict[str, Partition], auto: bool = False,
                      profile: str = PROFILE_HINT) -> tuple[list[Partition], str | None]:
    """The partition(s) a request goes to, or an explanation why there is none.

    With ``auto`` (the plugin's partition_config), a request without a partition may go to any.
    """
    if req.partition is not None:
        if req.partition in parts:
            return [parts[req.partition]], None
        return [], (f"{req.label} goes to partition {req.partition!r}, which `sinfo` does not "
                    f"list (partitions: {_names(parts)}): set slurm_partition for "
                    f"{req.rule} (set-resources) or under default-resources in {profile} "
                    "to one of them")
    if auto:
        return list(parts.values()), None
    default = [p for p in parts.values() if p.default]
    if default:
        return default[:1], None
    return [], (f"{req.label} names no partition and `sinfo` marks none as the default "
                f"(partitions: {_names(parts)}): set slurm_partition under default-resources "
                f"in {profile}")


def _names(parts: dict[str, Partition]) -> str:
    return ", ".join(p.name + ("*" if p.default else "") for p in parts.values()) or "none"


def _gpu_fix(req: Request, parts: dict[str, Partition], profile: str) -> str:
    with_gpus = [p.name for p in parts.values() if p.largest("n_gpus")]
    move = (f"put it on a partition with GPUs ({', '.join(with_gpus)}) with set-resources: "
            f"{req.rule}: slurm_partition in {profile}, or " if with_gpus else "")
    return (f"{move}run CPU-only: set {GPU_ENV}=0 in the environment (the profile then asks no "
            f"GPU for train and dump, which run on CPU), or set-resources: {req.rule}: gpu: 0 "
            f"in {profile}")


def problems_in(req: Request, part: Partition, parts: dict[str, Partition],
                profile: str = PROFILE_HINT) -> list[str]:
    """Why no node of `part` can ever run `req` (empty when one can), each with its fix."""
    out = []
    head, where = f"{req.label} asks", f"partition {part.name}"
    limit = part.time_limit_min
    if req.runtime_min is not None and limit is not None and req.runtime_min > limit:
        fix = (f"set-resources: {req.rule}: runtime (minutes per job), or fewer jobs per sbatch "
               f"(group-components: {req.group}: N)" if req.group else
               f"set-resources: {req.rule}: runtime: {limit}")
        out.append(f"{head} {req.runtime_min} min of wall time; {where} allows {limit} min: "
                   f"{fix} in {profile}")
    if any(_fits(n, req) for n in part.nodes):
        return out
    cpus, mem = part.largest("cpus"), part.largest("mem_mb")
    gpus = max((n.gpus_of(req.gpu_model) for n in part.nodes), default=0)
    node = []
    if req.cpus > cpus:
        node.append(f"{head} {req.cpus} CPUs; the largest node in {where} has {cpus} CPUs: set "
                    f"cores: {cpus} in {profile} (or pass --cores {cpus}; it caps every job's "
                    "threads)")
    if req.mem_mb is not None and req.mem_mb > mem:
        node.append(f"{head} {req.mem_mb} MB of memory; the largest node in {where} has {mem} "
                    f"MB: set-resources: {req.rule}: mem_mb: {mem} in {profile}")
    if req.gpus > gpus:
        if not part.largest("n_gpus"):
            node.append(f"{head} {_plural(req.gpus, 'GPU')}; {where} has no "
                        f"GPUs (no gpu GRES in sinfo): {_gpu_fix(req, parts, profile)}")
        elif req.gpu_model and not gpus:
            node.append(f"{head} GPU model {req.gpu_model}; {where} has "
                        f"{', '.join(part.gpu_models()) or 'GPUs of no named model'}: set "
                        f"set-resources: {req.rule}: gpu_model in {profile}")
        else:
            node.append(f"{head} {req.gpus} GPUs; the largest node in {where} has "
                        f"{_plural(gpus, 'GPU')}: set set-resources: {req.rule}: gpu: {gpus} in "
                        f"{profile}")
    if not node:
        node.append(f"{head} {req.asks()}; no single node in {where} offers all of it at once "
                    f"({_node_list(part)}): lower one of these requests in {profile}")
    return out + node


def _node_list(part: Partition) -> str:
    return "; ".join(f"{n.count} x {n.cpus} CPUs, {n.mem_mb} MB"
                     + (f", {n.n_gpus} GPUs" if n.n_gpus else "") for n in part.nodes)


def problems(requests: Iterable[Request], parts: dict[str, Partition], auto: bool = False,
             profile: str = PROFILE_HINT) -> list[str]:
    """Every reason (deduplicated, in order) why some request can never start."""
    out: list[str] = []
    for req in requests:
        targets, why = target_partitions(req, parts, auto, profile)
        if why:
            found = [why]
        else:
            per_part = [problems_in(req, p, parts, profile) for p in targets]
            found = [] if any(not f for f in per_part) else per_part[0]
        out += [f for f in found if f not in out]
    return out


def table(requests: Iterable[Request], parts: dict[str, Partition], auto: bool = False) -> str:
    """One line per distinct request: what it asks, where it goes, the largest node there."""
    lines = [f"{'submission':<50} {'asks':<34} partition: largest node (and time limit)"]
    for req in sorted(set(requests), key=lambda r: (r.label, r.cpus, r.mem_mb or 0)):
        targets, _ = target_partitions(req, parts, auto)
        where = "; ".join(
            f"{p.name}: {p.largest('cpus')} CPUs, {p.largest('mem_mb')} MB, "
            f"{_plural(p.largest('n_gpus'), 'GPU')}, "
            + (f"{p.time_limit_min} min" if p.time_limit_min is not None else "no time limit")
            for p in targets) or f"{req.partition!r}: not in sinfo"
        ok = "  <- REFUSED" if problems([req], parts, auto) else ""
        lines.append(f"{req.label:<50} {req.asks():<34} {where}{ok}")
    return "\n".join(lines)


def profile_hint(argv: list[str]) -> str:
    """'<dir>/config.yaml' of the profile on a Snakemake command line, else a generic phrase."""
    for i, arg in enumerate(argv):
        for flag in ("--workflow-profile", "--profile"):
            if arg == flag and i + 1 < len(argv):
                return os.path.join(argv[i + 1], "config.yaml")
            if arg.startswith(flag + "="):
                return os.path.join(arg.split("=", 1)[1], "config.yaml")
    return PROFILE_HINT


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


def check_workflow(workflow) -> None:
    """The Snakefile's ``onstart`` hook: refuse (SystemExit) a Slurm run that cannot start.

    Runs only on the login node's Snakemake with the slurm executor. ``LTPIPE_SLURM_CHECK=off``
    skips it; ``=only`` prints the table and stops before any submission (``ltpipe slurm-check``).
    """
    if not workflow.is_main_process:  # a job's own Snakemake on its node: checked already
        return
    mode = os.environ.get(CHECK_ENV, "").lower() or "on"
    executor = getattr(workflow.executor_plugin, "name", None)
    if mode == "only" and executor != "slurm":
        raise SystemExit(f"ltpipe slurm-check: the executor is {executor!r}, not slurm: add "
                         "`executor: slurm` to the profile (or pass --executor slurm)")
    if executor != "slurm":
        return
    if mode not in ("on", "off", "only"):
        raise SystemExit(f"ltpipe: {CHECK_ENV}={os.environ[CHECK_ENV]!r}: expected off (skip the "
                         "cluster-fit check) or unset")
    if mode == "off":
        return
    profile = profile_hint(sys.argv)
    auto = bool(getattr(workflow.executor_settings, "partition_config", None)
                or os.environ.get("SNAKEMAKE_SLURM_PARTITIONS"))
    try:
        parts = parse_sinfo(run_sinfo())
    except (OSError, subprocess.SubprocessError, SinfoError) as err:
        detail = getattr(err, "stderr", None) or err
        msg = (f"ltpipe: could not read the cluster's nodes with `{shlex.join(SINFO_CMD)}` "
               f"({str(detail).strip()})")
        if mode == "only":
            raise SystemExit(f"{msg}; run it where sinfo works (the login node)") from None
        print(f"{msg}: the check that every job fits a node is skipped", file=sys.stderr)
        return
    requests = [request_of(job) for job in submissions(workflow)]
    found = problems(requests, parts, auto, profile)
    if mode == "only":
        print(table(requests, parts, auto), flush=True)
    if found:
        raise SystemExit(f"{REFUSED}\n  " + "\n  ".join(found)
                         + f"\n(skip this check with {CHECK_ENV}=off)")
    if mode == "only":
        raise SystemExit(0)
    print(f"ltpipe: all {len(requests)} Slurm submissions fit a node of their partition "
          f"(sinfo)", file=sys.stderr, flush=True)


# Snakemake options that would skip the onstart hook (or run jobs without it): refused.
NO_HOOK_ARGS = ("-n", "--dry-run", "--dryrun", "--no-hooks", "--touch", "-t")


def slurm_check(profile: str, snakefile: str, extra: list[str]) -> int:
    """``ltpipe slurm-check``: every job of the whole workflow against the cluster, nothing run.

    Runs the login node's Snakemake with the profile and ``--forceall`` (every job, as on a fresh
    start) and ``LTPIPE_SLURM_CHECK=only``: the Snakefile's onstart hook prints the table of
    requests against the largest nodes and stops Snakemake before its first submission. Returns
    0 when every job fits, 1 when one never would, else Snakemake's exit status.
    """
    bad = [a for a in extra if a in NO_HOOK_ARGS or a.split("=")[0] in NO_HOOK_ARGS]
    if bad:
        raise ValueError(f"slurm-check cannot pass {' '.join(bad)} to Snakemake (it would skip "
                         "the check); leave it out")
    if not os.path.isfile(os.path.join(profile, "config.yaml")):
        raise ValueError(f"--profile {profile}: no config.yaml there; name a Snakemake profile "
                         "directory such as workflow/profiles/slurm")
    cmd = [sys.executable, "-m", "snakemake", "-s", snakefile, "--workflow-profile", profile,
           "--forceall", "--nolock", "--quiet", "all", *extra]
    env = dict(os.environ, **{CHECK_ENV: "only"})
    proc = subprocess.run(cmd, env=env, text=True, capture_output=True)
    out = proc.stdout + proc.stderr
    if "submission " not in proc.stdout:  # the hook did not print its table
        sys.stderr.write(out[-6000:])
        sys.stderr.write(f"ltpipe slurm-check: Snakemake stopped before the check "
                         f"(exit {proc.returncode}): see its output above\n")
        return proc.returncode or 2
    sys.stdout.write(proc.stdout)
    if proc.returncode == 0:
        return 0
    if REFUSED in out:
        sys.stderr.write(out[out.find(REFUSED):])
        return 1
    sys.stderr.write(out[-6000:])  # failed after the table: not the check's refusal
    return proc.returncode

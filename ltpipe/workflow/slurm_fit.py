"""Will Slurm ever run these jobs? Each job's request against what `sinfo` says nodes offer.

A Slurm job that asks for more CPUs, memory, GPUs or wall time than any node of its partition
offers either pends forever (squeue reason ``PartitionConfig``, ``Resources``...) or is refused by
sbatch (``Invalid generic resource``), and Snakemake waits without a word. This module refuses
such a run before the first ``sbatch``:

* :mod:`ltpipe.workflow.slurm_nodes` reads what the nodes offer (``sinfo``);
* :mod:`ltpipe.workflow.slurm_requests` makes each submission's ``Request`` as the Slurm executor
  plugin will send it;
* ``problems`` says, per request that no node of its partition can ever take, which rule, what it
  asks, what the largest node offers, and the setting to change;
* ``check_workflow`` is what the Snakefile's ``onstart`` hook calls on the login node when the
  executor is ``slurm``; ``python -m ltpipe slurm-check`` runs the same check and prints the table
  of requests against nodes without submitting anything (``LTPIPE_SLURM_CHECK=only``).

``LTPIPE_SLURM_CHECK=off`` skips the check (e.g. on a cluster whose nodes appear only on demand).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Iterable

from ltpipe.workflow.slurm_nodes import (  # noqa: F401  (re-exported for the tests and docs)
    SINFO_CMD,
    NodeKind,
    Partition,
    SinfoError,
    parse_gres,
    parse_sinfo,
    parse_time,
    run_sinfo,
)
from ltpipe.workflow.slurm_requests import (  # noqa: F401  (re-exported)
    PLUGIN_TESTED,
    Request,
    _plural,
    request_of,
    submissions,
)

CHECK_ENV = "LTPIPE_SLURM_CHECK"  # "off": skip; "only": print the table and stop (slurm-check)
GPU_ENV = "LTPIPE_SLURM_GPUS"  # read by workflow/profiles/slurm/config.yaml: 0 = CPU-only cluster
PROFILE_HINT = "your Slurm profile's config.yaml"
REFUSED = "ltpipe: jobs of this Slurm run could never start; nothing was submitted:"


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

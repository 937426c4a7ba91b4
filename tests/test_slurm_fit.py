"""ltpipe.workflow.slurm_fit on recorded `sinfo` text: parsing, and which requests no node can
ever take.

Known answers: the sinfo lines below are what ``sinfo --all --exact --noheader --format
"%P|%c|%m|%G|%l|%D"`` prints on a small cluster (a 2-CPU default partition without GPUs, a CPU
partition with two node kinds, a GPU partition with A100 and V100 nodes) and on the tests'
single-node Slurm (tests/slurm_cluster.py). The real-Slurm check is in tests/test_slurm.py.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from ltpipe.workflow.slurm_fit import (
    NodeKind,
    Request,
    SinfoError,
    parse_gres,
    parse_sinfo,
    parse_time,
    problems,
    profile_hint,
    request_of,
    table,
)

ROOT = Path(__file__).resolve().parent.parent
PROFILE = "workflow/profiles/slurm/config.yaml"

SINFO = """\
debug*|2|7800|(null)|30:00|2
cpu|48|192000|(null)|2-00:00:00|10
cpu|64|256000|(null)|2-00:00:00|4
gpu|32|512000|gpu:a100:4(S:0-1)|1-00:00:00|3
gpu|32|384000|gpu:v100:2,mps:200|1-00:00:00|2
"""
TEST_CLUSTER = "ltpipe*|2|32000|gpu:1|infinite|1\n"

CLASSIFY = Request("classify", group="stage2", jobs=16, cpus=8, mem_mb=4000, runtime_min=160)
TRAIN = Request("train", cpus=2, mem_mb=16000, gpus=1, runtime_min=720)


@pytest.mark.parametrize("text, minutes", [
    ("infinite", None), ("UNLIMITED", None), ("30", 30), ("30:00", 30), ("30:01", 31),
    ("2:00:00", 120), ("1-00:00:00", 1440), ("2-12", 3600), ("1-01:30", 1530)])
def test_parse_time(text, minutes):
    assert parse_time(text) == minutes


def test_parse_time_refuses_garbage_naming_it():
    with pytest.raises(SinfoError, match="'soon'"):
        parse_time("soon")


@pytest.mark.parametrize("text, gpus", [
    ("(null)", ()), ("gpu:1", (("", 1),)), ("gpu", (("", 1),)),
    ("gpu:a100:4(S:0-1)", (("a100", 4),)), ("gpu:a100:4(S:0,1)", (("a100", 4),)),
    ("gpu:a100:2,gpu:v100:2,mps:100", (("a100", 2), ("v100", 2))), ("mps:100", ())])
def test_parse_gres(text, gpus):
    assert parse_gres(text) == gpus


def test_parse_sinfo():
    parts = parse_sinfo(SINFO)
    assert list(parts) == ["debug", "cpu", "gpu"]
    assert [p.default for p in parts.values()] == [True, False, False]
    assert parts["debug"].nodes == [NodeKind(2, 7800, (), 2)]
    assert parts["debug"].time_limit_min == 30 and parts["cpu"].time_limit_min == 2880
    assert parts["cpu"].largest("cpus") == 64 and parts["cpu"].largest("mem_mb") == 256000
    assert parts["gpu"].largest("n_gpus") == 4 and parts["gpu"].gpu_models() == ["a100", "v100"]
    ours = parse_sinfo(TEST_CLUSTER)["ltpipe"]
    assert ours.default and ours.time_limit_min is None
    assert ours.nodes == [NodeKind(2, 32000, (("", 1),), 1)]


def test_parse_sinfo_refuses_other_formats_naming_the_line():
    with pytest.raises(SinfoError, match="6 fields"):
        parse_sinfo("debug* up 30:00 2 idle node[1-2]\n")
    with pytest.raises(SinfoError, match="CPU count 'many'"):
        parse_sinfo("debug*|many|7800|(null)|30:00|2\n")


def test_a_group_asking_more_cpus_than_any_node_is_refused_with_the_setting():
    prof = "workflow/profiles/slurm/config.yaml"
    assert problems([CLASSIFY], parse_sinfo(SINFO), profile=prof) == [
        "rule classify (group stage2, 16 jobs per sbatch) asks 160 min of wall time; partition "
        "debug allows 30 min: set-resources: classify: runtime (minutes per job), or fewer jobs "
        f"per sbatch (group-components: stage2: N) in {prof}",
        "rule classify (group stage2, 16 jobs per sbatch) asks 8 CPUs; the largest node in "
        f"partition debug has 2 CPUs: set cores: 2 in {prof} (or pass --cores 2; it caps every "
        "job's threads)"]
    on_test_cluster = problems([CLASSIFY], parse_sinfo(TEST_CLUSTER), profile=prof)
    assert on_test_cluster == [on_test_cluster[0]] and "asks 8 CPUs" in on_test_cluster[0]
    fitting = Request("classify", group="stage2", jobs=16, cpus=2, mem_mb=4000, runtime_min=160)
    assert problems([fitting], parse_sinfo(TEST_CLUSTER)) == []


def test_a_gpu_request_on_a_partition_without_gpus_is_refused_with_both_fixes():
    (msg,) = problems([Request("train", cpus=2, mem_mb=4000, gpus=1)], parse_sinfo(SINFO),
                      profile="P")
    assert msg == ("rule train asks 1 GPU; partition debug has no GPUs (no gpu GRES in sinfo): "
                   "put it on a partition with GPUs (gpu) with set-resources: train: "
                   "slurm_partition in P, or run CPU-only: set LTPIPE_SLURM_GPUS=0 in the "
                   "environment (the profile then asks no GPU for train and dump, which run on "
                   "CPU), or set-resources: train: gpu: 0 in P")
    cpu_only = parse_sinfo("debug*|2|7800|(null)|infinite|2\n")
    (msg,) = problems([Request("dump", cpus=2, gpus=1)], cpu_only, profile="P")
    assert "partition with GPUs" not in msg and "LTPIPE_SLURM_GPUS=0" in msg
    assert problems([Request("dump", cpus=2, gpus=0)], cpu_only) == []


def test_requests_on_a_named_partition():
    parts = parse_sinfo(SINFO)
    on = lambda part, **kw: Request("train", partition=part, **kw)  # noqa: E731
    assert problems([on("gpu", cpus=2, mem_mb=16000, gpus=1, runtime_min=720)], parts) == []
    assert problems([on("gpu", cpus=2, gpus=4, gpu_model="a100")], parts) == []
    (msg,) = problems([on("gpu", cpus=2, gpus=8)], parts, profile="P")
    assert msg.endswith("asks 8 GPUs; the largest node in partition gpu has 4 GPUs: set "
                        "set-resources: train: gpu: 4 in P")
    (msg,) = problems([on("gpu", cpus=2, gpus=1, gpu_model="h100")], parts, profile="P")
    assert "asks GPU model h100; partition gpu has a100, v100: set set-resources: train: " \
           "gpu_model in P" in msg
    (msg,) = problems([on("gpu", cpus=2, gpus=1, runtime_min=2000)], parts, profile="P")
    assert msg.endswith("asks 2000 min of wall time; partition gpu allows 1440 min: "
                        "set-resources: train: runtime: 1440 in P")
    (msg,) = problems([on("cpu", cpus=2, mem_mb=300000)], parts, profile="P")
    assert msg.endswith("asks 300000 MB of memory; the largest node in partition cpu has 256000 "
                        "MB: set-resources: train: mem_mb: 256000 in P")
    # each dimension fits some node, but no node has 4 V100s or 4 GPUs with 500 GB
    (msg,) = problems([on("gpu", cpus=2, mem_mb=500000, gpus=2, gpu_model="v100")], parts)
    assert "no single node in partition gpu offers all of it at once" in msg
    (msg,) = problems([on("gpus", cpus=1)], parts, profile="P")
    assert msg == ("rule train goes to partition 'gpus', which `sinfo` does not list "
                   "(partitions: debug*, cpu, gpu): set slurm_partition for train "
                   "(set-resources) or under default-resources in P to one of them")


def test_no_default_partition_and_automatic_partitions():
    parts = parse_sinfo(SINFO.replace("debug*", "debug"))
    (msg,) = problems([Request("split")], parts, profile="P")
    assert "names no partition and `sinfo` marks none as the default" in msg
    # the plugin's partition_config: any partition may take it
    assert problems([Request("split", cpus=30, gpus=2)], parts, auto=True) == []


def test_table_lists_each_request_once_with_its_partitions_largest_node():
    text = table([CLASSIFY, CLASSIFY, TRAIN], parse_sinfo(SINFO))
    lines = text.splitlines()
    assert len(lines) == 3
    assert lines[1].startswith("rule classify (group stage2, 16 jobs per sbatch)")
    assert "8 CPUs, 4000 MB, 160 min" in lines[1] and lines[1].endswith("REFUSED")
    assert "debug: 2 CPUs, 7800 MB, 0 GPUs, 30 min" in lines[1]
    assert "2 CPUs, 16000 MB, 1 GPU, 720 min" in lines[2]


class Resources(dict):
    """A job's resources as the plugin reads them: ``.get`` and attribute access."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None


class FakeJob(SimpleNamespace):
    """What request_of reads of a Snakemake job; hashable like one."""

    __hash__ = object.__hash__


def _job(rule, threads, **res):
    return FakeJob(resources=Resources(res), threads=threads, is_group=lambda: False,
                   rule=SimpleNamespace(name=rule))


def test_request_of_follows_the_plugins_cpu_memory_and_gpu_rules():
    assert request_of(_job("train", 2, gpu=1, mem_mb=16000, runtime=720)) == TRAIN
    assert request_of(_job("t", 2, gres="gpu:a100:2")) == Request(
        "t", cpus=2, gpus=2, gpu_model="a100")
    assert request_of(_job("t", 2, gpu=2, cpus_per_gpu=4)).cpus == 8
    assert request_of(_job("t", 2, cpus_per_task=6, mem_mb_per_cpu=1000)).mem_mb == 6000
    assert request_of(_job("t", 1, mem_mb="<TBD>", slurm_partition="cpu")) == Request(
        "t", partition="cpu")
    group = SimpleNamespace(resources=Resources(_cores=8, mem_mb=4000, runtime=160), threads=8,
                            is_group=lambda: True, groupid="stage2",
                            jobs=[_job("classify", 8)] * 16)
    assert request_of(group) == CLASSIFY


def plugins_request(job) -> tuple[int, int | None, int, str | None, int | None]:
    """(CPUs, memory MB, GPUs, GPU model, minutes) read off the sbatch command line the
    installed Slurm executor plugin builds for ``job``."""
    import re

    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    params = {"run_uuid": "u", "slurm_logfile": "log", "comment_str": "c", "account": "",
              "partition": "", "workdir": "."}
    line = get_submit_command(job, params) + set_gres_string(job)

    def flag(pattern):
        m = re.search(pattern, line)
        return m.group(1) if m else None

    gpus, model = 0, None
    if (spec := flag(r"--gpus=(\S+)")) is not None:
        model, _, n = spec.rpartition(":")
        gpus, model = int(n), model or None
    elif (spec := flag(r"--gres=(\S+)")) is not None:
        ((model, gpus),) = parse_gres(spec)
        model = model or None
    per_gpu = flag(r"--cpus-per-gpu=(\d+)")
    cpus = int(per_gpu) * gpus if per_gpu else int(flag(r"--cpus-per-task=(\d+)"))
    per_cpu = flag(r"--mem-per-cpu (\d+)")
    mem = int(per_cpu) * cpus if per_cpu else (int(m) if (m := flag(r"--mem (\d+)")) else None)
    minutes = flag(r" -t (\d+)")
    return cpus, mem, gpus, model, int(minutes) if minutes else None


@pytest.mark.parametrize("threads, res", [
    (2, {"gpu": 1, "mem_mb": 16000, "runtime": 720}),
    (2, {"gpu": 2, "cpus_per_gpu": 4, "mem_mb": 8000}),
    (2, {"gpu": 1, "gpu_model": "a100", "mem_mb_per_cpu": 2000}),
    (2, {"gres": "gpu:v100:2", "mem_mb": 1000}),
    (4, {"cpus_per_task": 6, "mem_mb_per_cpu": 1000, "runtime": 30}),
    (8, {"mem_mb": 4000, "runtime": 160}),
    (1, {"threads": 3, "mem_mb": 500}),
])
def test_request_of_matches_the_installed_plugins_sbatch_line(threads, res):
    """request_of against the plugin's own command line: this fails when an upgrade of the
    plugin changes its arithmetic (ltpipe.workflow.slurm_requests.PLUGIN_TESTED names the
    releases checked)."""
    from importlib.metadata import version

    from packaging.specifiers import SpecifierSet

    from ltpipe.workflow.slurm_requests import PLUGIN_TESTED

    job = FakeJob(resources=Resources(res), threads=threads, is_group=lambda: False,
                  rule=SimpleNamespace(name="r"))
    req = request_of(job)
    assert (req.cpus, req.mem_mb, req.gpus, req.gpu_model, req.runtime_min) == \
        plugins_request(job)
    installed = version("snakemake-executor-plugin-slurm")
    assert installed in SpecifierSet(PLUGIN_TESTED), (
        f"the Slurm plugin {installed} is outside the releases ltpipe's fit check was tested "
        f"against ({PLUGIN_TESTED}): check request_of against it, then widen PLUGIN_TESTED and "
        "pyproject.toml's pin together")
    pin = (ROOT / "pyproject.toml").read_text()
    assert f'"snakemake-executor-plugin-slurm{PLUGIN_TESTED}"' in pin


def test_profile_hint_names_the_profile_on_the_command_line():
    assert profile_hint(["snakemake", "--workflow-profile", "prof"]) == "prof/config.yaml"
    assert profile_hint(["snakemake", "--profile=p2"]) == "p2/config.yaml"
    assert profile_hint(["snakemake"]) == "your Slurm profile's config.yaml"


@pytest.mark.parametrize("env, gpus", [(None, "1"), ("0", "0")])
def test_profile_gpu_switch(monkeypatch, env, gpus):
    """LTPIPE_SLURM_GPUS=0 turns the profile's GPU requests for train and dump off (read as
    Snakemake reads a profile)."""
    from snakemake.profiles import ProfileConfigFileParser

    if env is None:
        monkeypatch.delenv("LTPIPE_SLURM_GPUS", raising=False)
    else:
        monkeypatch.setenv("LTPIPE_SLURM_GPUS", env)
    with open(ROOT / PROFILE) as fh:
        parsed = ProfileConfigFileParser().parse(fh)
    assert {f"train:gpu={gpus}", f"dump:gpu={gpus}"} <= set(parsed["set-resources"])
    assert "__use_yte__" not in parsed and parsed["executor"] == "slurm"


def _workflow(executor: str, jobs: list) -> SimpleNamespace:
    dag = SimpleNamespace(needrun_jobs=lambda: jobs, get_job_group=lambda job: None)
    return SimpleNamespace(is_main_process=True, dag=dag, executor_settings=None,
                           executor_plugin=SimpleNamespace(name=executor))


def test_the_onstart_hook_on_recorded_sinfo(monkeypatch, capsys):
    """check_workflow with sinfo's answer recorded: only the slurm executor is checked, local
    jobs are left out, a misfit stops the run naming it, LTPIPE_SLURM_CHECK=off skips."""
    import ltpipe.workflow.slurm_fit as fit

    monkeypatch.setattr(fit, "run_sinfo", lambda env=None: SINFO)
    monkeypatch.setattr(fit.sys, "argv", ["snakemake", "--workflow-profile", "prof"])
    monkeypatch.delenv(fit.CHECK_ENV, raising=False)
    train = _job("train", 2, gpu=1, mem_mb=4000)
    summary = _job("summary", 64)
    train.is_local, summary.is_local = False, True
    assert fit.check_workflow(_workflow("local", [train])) is None
    with pytest.raises(SystemExit) as exc:
        fit.check_workflow(_workflow("slurm", [train, summary]))
    text = str(exc.value.code)
    assert text.startswith(fit.REFUSED) and "rule train asks 1 GPU; partition debug" in text
    assert "set-resources: train: gpu: 0 in prof/config.yaml" in text and "summary" not in text
    monkeypatch.setenv(fit.CHECK_ENV, "off")
    assert fit.check_workflow(_workflow("slurm", [train])) is None
    monkeypatch.setenv(fit.CHECK_ENV, "maybe")
    with pytest.raises(SystemExit, match="LTPIPE_SLURM_CHECK='maybe': expected off"):
        fit.check_workflow(_workflow("slurm", [train]))
    monkeypatch.delenv(fit.CHECK_ENV)
    split = _job("split", 1, mem_mb=4000)
    split.is_local = False
    assert fit.check_workflow(_workflow("slurm", [split, summary])) is None
    assert "ltpipe: all 1 Slurm submissions fit" in capsys.readouterr().err

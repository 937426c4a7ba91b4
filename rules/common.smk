# Validation of the config and the target lists: the checks are in ltpipe/workflow/config.py, the targets and input functions in ltpipe/workflow/targets.py.
import os
import sys

sys.path.insert(0, workflow.basedir)  # use this checkout's ltpipe package

from snakemake.utils import validate

from ltpipe.workflow.targets import plot_targets
from ltpipe.workflow.slurm_fit import check_workflow as check_slurm_fit
from ltpipe import runtime

from ltpipe.workflow.config import (
    as_json,
    check_config,
    classifier_info,
    classifier_inputs,
    classifier_job,
    classifier_params,
    dump_settings,
    metric_targets,
    recipe_settings,
    split_settings,
    sweep_table,
    validate_schema,
)
from ltpipe.workflow.compose import expand_compositions
from ltpipe.data.sources import data_state
from ltpipe.paths import Layout
from ltpipe.yamlfile import load_yaml_strict

for _path in workflow.configfiles:
    load_yaml_strict(_path)  # refuses duplicate keys, which plain YAML silently drops
validate_schema(config)  # readable messages naming the key and the fix
validate(config, "../workflow/schemas/config.schema.yaml")  # fills schema defaults
expand_compositions(config)  # a composed entry (reads: <entry>) reads its inputs' backbones
if workflow.is_main_process:
    # what a schema cannot express: registered names, references, sweeps. It reads torch-free
    # declarations (ltpipe.models.catalog, ltpipe.losses.spec; tests/test_imports.py) but may load
    # plug-ins, so only the main process runs it: a job that a cluster executor starts runs
    # Snakemake again on the node, with the config the main process already checked.
    check_config(config)

# Runtime settings (the recipes' speed-only keys, classify_device) reach the jobs through the
# environment, not params: changing one reruns nothing (ltpipe/runtime.py). Jobs inherit it
# locally; on a cluster each job's own Snakemake sets it again from this line.
runtime.export(config)


onstart:
    # On Slurm (executor slurm), once on the login node before the first sbatch: refuse a run
    # whose jobs no node of their partition can ever take (CPUs, memory, GPUs, wall time from
    # `sinfo`), naming the rule and the setting to change. LTPIPE_SLURM_CHECK=off skips it.
    check_slurm_fit(workflow)


# Every rule runs `python -m ltpipe ...`: the Python that runs this Snakemake comes first on the
# jobs' PATH, so they use it and its packages (.venv/bin/python -m snakemake needs no activated
# venv). A conda/container job still puts its own environment first.
# (update(): --lint takes an item assignment to os.environ for a read of an undeclared variable)
_PYTHON_BIN = os.path.dirname(sys.executable)
if os.environ.get("PATH", "").split(os.pathsep)[0] != _PYTHON_BIN:
    os.environ.update(PATH=os.pathsep.join(filter(None, [_PYTHON_BIN, os.environ.get("PATH")])))
# ... and import this checkout's ltpipe, as this Snakefile does, not whichever one that Python
# has installed (an editable install of another checkout would otherwise run the jobs).
if os.environ.get("PYTHONPATH", "").split(os.pathsep)[0] != workflow.basedir:
    os.environ.update(
        PYTHONPATH=os.pathsep.join(filter(None, [workflow.basedir, os.environ.get("PYTHONPATH")]))
    )

PATHS = Layout(config)  # every artifact's path pattern (ltpipe/paths.py)
JOBS = sweep_table(config)  # {(classifier, point): job}, every sweep expanded once
SUMMARY = [PATHS.pattern("summary_csv"), PATHS.pattern("summary_md")]
REPORT_TARGETS = plot_targets(config)  # figures and tables of rules/report.smk


wildcard_constraints:
    dataset=r"[A-Za-z0-9][A-Za-z0-9_-]*",
    imb=r"[0-9.]+|native",
    split_seed=r"\d+",
    seed=r"\d+",
    backbone=r"[A-Za-z0-9][A-Za-z0-9_-]*",
    classifier=r"[A-Za-z0-9][A-Za-z0-9_-]*",
    point=r"[^/]+",

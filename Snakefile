# ltpipe: long-tailed recognition as a Snakemake DAG.
#   config.yaml --validate--> split --> train backbone (GPU) --> dump cache
#       --> classifier-stage jobs (CPU, one per method and sweep point) --> summary
# Run: snakemake --cores 8 --resources gpu=2      (see README.md)
from snakemake.utils import min_version

min_version("8.20")


# config.yaml is the default; a --configfile (e.g. a preset in workflow/presets/) replaces it
# instead of being merged into it, so a preset never inherits the default's data sets.
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


include: "rules/common.smk"


rule all:
    default_target: True
    input:
        SUMMARY,
        REPORT_TARGETS,  # plots and the comparison table (rules/report.smk)


include: "rules/splits.smk"
include: "rules/backbones.smk"
include: "rules/cache.smk"
include: "rules/classifiers.smk"
include: "rules/report.smk"

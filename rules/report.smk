# Results: the summary tables, the published numbers beside ours, and the figures. Every output
# marked report() goes into `snakemake --report report.html`, captioned from workflow/report/.
# Targets and each job's inputs come from ltpipe/workflow/targets.py; plots are cheap (t-SNE on at
# most 1000 test samples of the first split seed and training seed).
from functools import partial

from ltpipe.workflow.targets import (
    group_inputs,
    group_metrics,
    run_traits,
    summary_inputs,
    sweep_metrics,
    tsne_args,
    tsne_inputs,
)

LOGS = PATHS.logs
WNORM_CONFUSION = {"wnorm": "4. Classifier weight norms", "confusion": "5. Confusion matrices"}


report: "../workflow/report/workflow.rst"


rule summary:
    # metrics.json, logits.npz and the caches' test labels: per-image results for the intervals
    # and the paired comparisons (ltpipe/report/summary.py)
    input:
        **summary_inputs(config, JOBS),
    output:
        csv=report(SUMMARY[0], caption="../workflow/report/summary.rst", category="1. Tables"),
        md=SUMMARY[1],
        paired=PATHS.pattern("paired_csv"),
    log:
        f"{LOGS}/summary.log",
    localrule: True
    conda:
        "../envs/ltpipe.yaml"
    shell:
        "python -m ltpipe summarize --csv {output.csv} --md {output.md} --paired {output.paired}"
        " {input.metrics} > {log} 2>&1"


rule compare:
    input:
        summary=SUMMARY[0],
        published=workflow.source_path("../workflow/published_results.yaml"),
    output:
        csv=report(PATHS.pattern("comparison_csv"), caption="../workflow/report/comparison.rst", category="1. Tables"),
        md=PATHS.pattern("comparison_md"),
        html=report(PATHS.pattern("tables_html"), caption="../workflow/report/tables.rst", category="1. Tables"),
    params:
        traits=as_json(run_traits(config)),
    log:
        f"{LOGS}/compare.log",
    localrule: True
    conda:
        "../envs/ltpipe.yaml"
    shell:
        "python -m ltpipe compare --published {input.published} --summary {input.summary}"
        " --traits {params.traits:q} --csv {output.csv} --md {output.md} --html {output.html}"
        " > {log} 2>&1"


rule plot_perclass:
    input:
        partial(group_metrics, config),
    output:
        report(
            PATHS.pattern("plot_perclass"),
            caption="../workflow/report/perclass.rst",
            category="2. Per-class accuracy",
            subcategory="{dataset} IF{imb}",
            labels={"data set": "{dataset}", "IF": "{imb}", "backbone": "{group}"},
        ),
    log:
        f"{LOGS}/plots/perclass_{{dataset}}_if{{imb}}_{{group}}.log",
    wildcard_constraints:
        group=r"[A-Za-z0-9_+-]+",
    localrule: True
    conda:
        "../envs/ltpipe.yaml"
    shell:
        "python -m ltpipe plot perclass --metrics {input} --out {output} > {log} 2>&1"


rule plot_sweep:
    input:
        partial(sweep_metrics, config),
    output:
        report(
            PATHS.pattern("plot_sweep"),
            caption="../workflow/report/sweep.rst",
            category="3. Sweeps",
            subcategory="{dataset} IF{imb}",
            labels={"data set": "{dataset}", "IF": "{imb}", "classifier": "{classifier}"},
        ),
    log:
        f"{LOGS}/plots/sweep_{{dataset}}_if{{imb}}_{{classifier}}.log",
    localrule: True
    conda:
        "../envs/ltpipe.yaml"
    shell:
        "python -m ltpipe plot sweep --classifier {wildcards.classifier} --metrics {input}"
        " --out {output} > {log} 2>&1"


rule plot_wnorm_confusion:
    # Classifier weight norms, and confusion matrices where plot_targets asks for them.
    input:
        unpack(partial(group_inputs, config)),
    output:
        report(
            PATHS.pattern("plot_wnorm_confusion"),
            caption="../workflow/report/wnorm_confusion.rst",
            category=lambda wc: WNORM_CONFUSION[wc.kind],
            subcategory="{dataset} IF{imb}",
            labels={"data set": "{dataset}", "IF": "{imb}", "backbone": "{group}"},
        ),
    log:
        f"{LOGS}/plots/{{kind}}_{{dataset}}_if{{imb}}_{{group}}.log",
    wildcard_constraints:
        kind="|".join(WNORM_CONFUSION),
        group=r"[A-Za-z0-9_+-]+",
    resources:
        runtime=20,
        mem_mb=4000,
    conda:
        "../envs/ltpipe.yaml"
    shell:
        "python -m ltpipe plot {wildcards.kind} --metrics {input.metrics} --caches {input.caches}"
        " --out {output} > {log} 2>&1"


rule plot_tsne:
    # One backbone's test features (tsne_backbone_<recipe>) or an FFN entry's fused ones
    # (tsne_fused_<entry>, with the w1 and normalisation its job uses).
    input:
        partial(tsne_inputs, config),
    output:
        report(
            PATHS.pattern("plot_tsne"),
            caption="../workflow/report/tsne.rst",
            category="6. t-SNE of test features",
            subcategory="{dataset} IF{imb}",
            labels=lambda wc: {"data set": wc.dataset, "IF": wc.imb, "features": wc.features
                               + (" (fused)" if wc.kind == "fused" else "")},
        ),
    params:
        max_points=1000,
        args=partial(tsne_args, config),
    log:
        f"{LOGS}/plots/tsne_{{kind}}_{{dataset}}_if{{imb}}_{{features}}.log",
    wildcard_constraints:
        kind="backbone|fused",
        features=r"[A-Za-z0-9][A-Za-z0-9_-]*",
    threads: 2
    resources:
        runtime=30,
        mem_mb=8000,
    conda:
        "../envs/ltpipe.yaml"
    shell:
        "OMP_NUM_THREADS={threads} python -m ltpipe plot tsne --caches {input} {params.args:q}"
        " --max-points {params.max_points} --out {output} > {log} 2>&1"


rule plots:
    # Every figure and the comparison table (also in `rule all`).
    input:
        REPORT_TARGETS,
    localrule: True

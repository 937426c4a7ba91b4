# Results: the summary tables, the published numbers beside ours, and the figures. Every output
# marked report() goes into `snakemake --report report.html`, captioned from workflow/report/.
# Targets and each job's inputs come from ltpipe/report/targets.py; plots are cheap (t-SNE on at
# most 1000 test samples of the first split seed and training seed).
from ltpipe.report.targets import (
    fusion_settings,
    group_caches,
    group_entries,
    logits_of,
    metrics_of,
    plot_targets,
    run_traits,
    sweep_entries,
    tsne_caches,
)

REPORT_TARGETS = plot_targets(config)
PLOTS = f"{R}/{{dataset}}/if{{imb}}/plots"


report: "../workflow/report/workflow.rst"


rule summary:
    input:
        metric_targets(config),
    output:
        csv=report(SUMMARY[0], caption="../workflow/report/summary.rst", category="1. Tables"),
        md=SUMMARY[1],
    log:
        f"{LOGS}/summary.log",
    localrule: True
    conda:
        "../envs/ltpipe.yaml"
    shell:
        "python -m ltpipe summarize --csv {output.csv} --md {output.md} {input} > {log} 2>&1"


rule compare:
    input:
        summary=SUMMARY[0],
        published=workflow.source_path("../workflow/published_results.yaml"),
    output:
        csv=report(f"{R}/comparison.csv", caption="../workflow/report/comparison.rst", category="1. Tables"),
        md=f"{R}/comparison.md",
        html=report(f"{R}/tables.html", caption="../workflow/report/tables.rst", category="1. Tables"),
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
        lambda wc: metrics_of(config, wc.dataset, wc.imb, group_entries(config, wc.dataset, wc.group)),
    output:
        report(
            f"{PLOTS}/perclass_{{group}}.png",
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
        lambda wc: metrics_of(config, wc.dataset, wc.imb, sweep_entries(config, wc.dataset, wc.classifier)),
    output:
        report(
            f"{PLOTS}/sweep_{{classifier}}.png",
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


rule plot_weight_norms:
    input:
        metrics=lambda wc: metrics_of(config, wc.dataset, wc.imb, group_entries(config, wc.dataset, wc.group)),
        logits=lambda wc: logits_of(config, wc.dataset, wc.imb, group_entries(config, wc.dataset, wc.group)),
        caches=lambda wc: group_caches(config, wc.dataset, wc.imb, wc.group),
    output:
        report(
            f"{PLOTS}/wnorm_{{group}}.png",
            caption="../workflow/report/wnorm.rst",
            category="4. Classifier weight norms",
            subcategory="{dataset} IF{imb}",
            labels={"data set": "{dataset}", "IF": "{imb}", "backbone": "{group}"},
        ),
    log:
        f"{LOGS}/plots/wnorm_{{dataset}}_if{{imb}}_{{group}}.log",
    wildcard_constraints:
        group=r"[A-Za-z0-9_+-]+",
    resources:
        runtime=20,
        mem_mb=4000,
    conda:
        "../envs/ltpipe.yaml"
    shell:
        "python -m ltpipe plot wnorm --metrics {input.metrics} --caches {input.caches}"
        " --out {output} > {log} 2>&1"


rule plot_confusion:
    input:
        metrics=lambda wc: metrics_of(config, wc.dataset, wc.imb, group_entries(config, wc.dataset, wc.group)),
        logits=lambda wc: logits_of(config, wc.dataset, wc.imb, group_entries(config, wc.dataset, wc.group)),
        caches=lambda wc: group_caches(config, wc.dataset, wc.imb, wc.group),
    output:
        report(
            f"{PLOTS}/confusion_{{group}}.png",
            caption="../workflow/report/confusion.rst",
            category="5. Confusion matrices",
            subcategory="{dataset} IF{imb}",
            labels={"data set": "{dataset}", "IF": "{imb}", "backbone": "{group}"},
        ),
    log:
        f"{LOGS}/plots/confusion_{{dataset}}_if{{imb}}_{{group}}.log",
    wildcard_constraints:
        group=r"[A-Za-z0-9_+-]+",
    resources:
        runtime=20,
        mem_mb=4000,
    conda:
        "../envs/ltpipe.yaml"
    shell:
        "python -m ltpipe plot confusion --metrics {input.metrics} --caches {input.caches}"
        " --out {output} > {log} 2>&1"


rule plot_tsne:
    input:
        lambda wc: tsne_caches(config, wc.dataset, wc.imb, [wc.backbone]),
    output:
        report(
            f"{PLOTS}/tsne_backbone_{{backbone}}.png",
            caption="../workflow/report/tsne.rst",
            category="6. t-SNE of test features",
            subcategory="{dataset} IF{imb}",
            labels={"data set": "{dataset}", "IF": "{imb}", "features": "{backbone}"},
        ),
    params:
        max_points=1000,
    log:
        f"{LOGS}/plots/tsne_{{dataset}}_if{{imb}}_{{backbone}}.log",
    threads: 2
    resources:
        runtime=30,
        mem_mb=8000,
    conda:
        "../envs/ltpipe.yaml"
    shell:
        "OMP_NUM_THREADS={threads} python -m ltpipe plot tsne --caches {input}"
        " --max-points {params.max_points} --title '{wildcards.dataset} IF{wildcards.imb},"
        " backbone {wildcards.backbone}' --out {output} > {log} 2>&1"


rule plot_tsne_fused:
    input:
        lambda wc: tsne_caches(config, wc.dataset, wc.imb, config["classifiers"][wc.classifier]["backbones"]),
    output:
        report(
            f"{PLOTS}/tsne_fused_{{classifier}}.png",
            caption="../workflow/report/tsne.rst",
            category="6. t-SNE of test features",
            subcategory="{dataset} IF{imb}",
            labels={"data set": "{dataset}", "IF": "{imb}", "features": "{classifier} (fused)"},
        ),
    params:
        max_points=1000,
        w1=lambda wc: fusion_settings(config, wc.classifier)["w1"],
        normalize=lambda wc: "--normalize" if fusion_settings(config, wc.classifier)["normalize"] else "",
    log:
        f"{LOGS}/plots/tsne_fused_{{dataset}}_if{{imb}}_{{classifier}}.log",
    threads: 2
    resources:
        runtime=30,
        mem_mb=8000,
    conda:
        "../envs/ltpipe.yaml"
    shell:
        "OMP_NUM_THREADS={threads} python -m ltpipe plot tsne --caches {input} --w1 {params.w1}"
        " {params.normalize} --max-points {params.max_points} --title '{wildcards.dataset}"
        " IF{wildcards.imb}, {wildcards.classifier} fused features (w1 {params.w1})'"
        " --out {output} > {log} 2>&1"


rule plots:
    # Every figure and the comparison table (the lead adds REPORT_TARGETS to `rule all`).
    input:
        REPORT_TARGETS,
    localrule: True

# Results: every classifier-stage job's metrics aggregated into one table.


rule summary:
    input:
        metric_targets(config),
    output:
        csv=SUMMARY[0],
        md=SUMMARY[1],
    log:
        f"{LOGS}/summary.log",
    localrule: True
    shell:
        "python -m ltpipe summarize --csv {output.csv} --md {output.md} {input} > {log} 2>&1"

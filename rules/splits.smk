# Long-tailed splits: one per data set, imbalance factor and split seed.


rule split:
    output:
        f"{SPLIT_DIR}/split.npz",
    params:
        settings=lambda wc: as_json(split_settings(config, wc.dataset)),
    log:
        f"{LOGS}/split/{{dataset}}_if{{imb}}_s{{split_seed}}.log",
    resources:
        runtime=30,
        mem_mb=4000,
    conda:
        "../envs/ltpipe.yaml"
    shell:
        "python -m ltpipe split --dataset {wildcards.dataset} --settings {params.settings:q}"
        " --imbalance-factor {wildcards.imb} --seed {wildcards.split_seed}"
        " --out {output} > {log} 2>&1"

# Long-tailed splits: one per data set, imbalance factor and split seed.


rule split:
    output:
        PATHS.pattern("split"),
    params:
        settings=lambda wc: as_json(split_settings(config, wc.dataset)),
        # the state of the data set's files (ltpipe/data/watch.py): a changed, added or removed
        # file reruns the split and what it feeds (docs/data-sources.md)
        data=lambda wc: data_state(config["datasets"][wc.dataset]),
    log:
        PATHS.log("split"),
    resources:
        runtime=30,
        mem_mb=4000,
    conda:
        "../envs/ltpipe.yaml"
    shell:
        "python -m ltpipe split --dataset {wildcards.dataset} --settings {params.settings:q}"
        " --imbalance-factor {wildcards.imb} --seed {wildcards.split_seed}"
        " --out {output} > {log} 2>&1"

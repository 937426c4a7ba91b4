# Feature cache: pooled features, feature maps, logits, CAMs and the stage-one head, per part.


rule dump:
    input:
        split=PATHS.pattern("split"),
        model=PATHS.pattern("model"),
    output:
        directory(PATHS.pattern("cache")) if PATHS.ext == "zarr" else PATHS.pattern("cache"),
    params:
        settings=as_json(dump_settings(config)),
    log:
        PATHS.log("dump"),
    threads: 2
    resources:
        gpu=1,
        runtime=120,
        mem_mb=8000,
    conda:
        "../envs/ltpipe.yaml"
    shell:
        "python -m ltpipe dump --split {input.split} --model {input.model} --settings {params.settings:q}"
        " --threads {threads} --out {output} > {log} 2>&1"

# Feature cache: pooled features, feature maps, logits, CAMs and the stage-one head, per part.


rule dump:
    input:
        split=f"{SPLIT_DIR}/split.npz",
        model=f"{RUN_DIR}/model.pt",
    output:
        directory(f"{RUN_DIR}/cache.zarr") if CACHE_EXT == "zarr" else f"{RUN_DIR}/cache.h5",
    params:
        settings=as_json(dump_settings(config)),
    log:
        f"{LOGS}/dump/{{dataset}}_if{{imb}}_s{{split_seed}}_{{backbone}}_t{{seed}}.log",
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

# Stage one: train a backbone per recipe, split and training seed. A killed or preempted job
# resumes from <model>.ckpt when Snakemake (retries) or SLURM (requeue) starts it again.


rule train:
    input:
        split=PATHS.pattern("split"),
        # the recipe's init_weights file: a changed or missing file is seen at DAG build
        weights=lambda wc: [p for p in [config["backbones"][wc.backbone].get("init_weights")] if p],
    output:
        model=PATHS.pattern("model"),
    params:
        recipe=lambda wc: as_json(recipe_settings(config, wc.backbone)),
    log:
        PATHS.log("train"),
    benchmark:
        PATHS.log("train", "tsv")
    threads: 2
    retries: 2
    resources:
        gpu=1,
        runtime=24 * 60,
        mem_mb=16000,
    conda:
        "../envs/ltpipe.yaml"
    shell:
        "python -m ltpipe train --split {input.split} --recipe {params.recipe:q} --seed {wildcards.seed}"
        " --threads {threads} --runtime-of {wildcards.backbone} --out {output.model} >> {log} 2>&1"

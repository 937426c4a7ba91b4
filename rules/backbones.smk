# Stage one: train a backbone per recipe, split and training seed. A killed or preempted job
# resumes from <model>.ckpt when Snakemake (retries) or SLURM (requeue) starts it again.


rule train:
    input:
        split=f"{SPLIT_DIR}/split.npz",
    output:
        model=f"{RUN_DIR}/model.pt",
    params:
        recipe=lambda wc: as_json(recipe_settings(config, wc.backbone)),
    log:
        f"{LOGS}/train/{{dataset}}_if{{imb}}_s{{split_seed}}_{{backbone}}_t{{seed}}.log",
    benchmark:
        f"{LOGS}/train/{{dataset}}_if{{imb}}_s{{split_seed}}_{{backbone}}_t{{seed}}.tsv"
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

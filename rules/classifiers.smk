# Classifier stage: one cheap CPU job per classifier entry, training seed and sweep point.
# Jobs share the group "stage2" so that a cluster run submits them in a few batches.


rule classify:
    input:
        unpack(lambda wc: classifier_inputs(config, wc)),
    output:
        metrics=f"{SPLIT_DIR}/cls/{{classifier}}/t{{seed}}/{{point}}/metrics.json",
        logits=f"{SPLIT_DIR}/cls/{{classifier}}/t{{seed}}/{{point}}/logits.npz",
    params:
        job=lambda wc: as_json(classifier_job(config, wc.classifier, wc.point)),
        info=lambda wc: classifier_info(config, wc),
    log:
        f"{LOGS}/classify/{{dataset}}_if{{imb}}_s{{split_seed}}_{{classifier}}_t{{seed}}_{{point}}.log",
    threads: 1
    group:
        "stage2"
    resources:
        runtime=30,
        mem_mb=4000,
    conda:
        "../envs/ltpipe.yaml"
    shell:
        "python -m ltpipe classify --split {input.split} --job {params.job:q} --info {params.info:q}"
        " --seed {wildcards.seed} --threads {threads} --out-dir $(dirname {output.metrics})"
        " --caches {input.caches} --models {input.models} > {log} 2>&1"

# Classifier stage: one job per classifier entry, training seed and sweep point.
# Jobs share the group "stage2" so that a cluster run submits them in a few batches.
# mem_mb comes from the caches' manifests and the method (ltpipe/classifiers/memory.py): about
# 1-1.5 GB on CIFAR-100-LT, 4.6-13 GB on ImageNet-LT; a cache that does not exist yet (dry run
# before the dump) shows 4000; Snakemake evaluates it again when it schedules the job.

# gpu: 1 where the config's classify_device asks for one (cuda, or auto for gradient-trained
# methods; ltpipe/classifiers/device.py); the job then leases it like train and dump. The choice
# reaches jobs through the environment (ltpipe/runtime.py): changing it reruns nothing.

from ltpipe.classifiers.device import rule_gpu
from ltpipe.classifiers.memory import rule_mem_mb


rule classify:
    input:
        unpack(lambda wc: classifier_inputs(config, wc, JOBS)),
    output:
        metrics=PATHS.pattern("metrics"),
        logits=PATHS.pattern("logits"),
    params:
        job=lambda wc: classifier_params(config, JOBS, wc),
        info=lambda wc: classifier_info(config, wc, JOBS),
    log:
        PATHS.log("classify"),
    threads: 1
    group:
        "stage2"
    resources:
        gpu=lambda wc: rule_gpu(config, wc.classifier),
        runtime=30,
        mem_mb=lambda wc, input: rule_mem_mb(config, wc.classifier, input.caches),
    conda:
        "../envs/ltpipe.yaml"
    shell:
        "python -m ltpipe classify --split {input.split} --job {params.job:q} --info {params.info:q}"
        " --seed {wildcards.seed} --threads {threads} --out-dir $(dirname {output.metrics})"
        " --caches {input.caches} --models {input.models} > {log} 2>&1"

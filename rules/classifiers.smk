# Classifier stage: one cheap CPU job per classifier entry, training seed and sweep point.
# Jobs share the group "stage2" so that a cluster run submits them in a few batches.


def _classifier_inputs(wc):
    backbones = config["classifiers"][wc.classifier]["backbones"]
    split_dir = f"{R}/{wc.dataset}/if{wc.imb}/s{wc.split_seed}"
    return {
        "split": f"{split_dir}/split.npz",
        "caches": [cache_path(config, split_dir[len(R) + 1 :], b, wc.seed) for b in backbones],
        "models": [f"{split_dir}/{b}/t{wc.seed}/model.pt" for b in backbones],
    }


def _classifier_info(wc):
    return as_json(
        {
            "dataset": wc.dataset,
            "imbalance_factor": wc.imb,
            "split_seed": int(wc.split_seed),
            "classifier": wc.classifier,
            "point": wc.point,
            "backbones": config["classifiers"][wc.classifier]["backbones"],
        }
    )


rule classify:
    input:
        unpack(_classifier_inputs),
    output:
        metrics=f"{SPLIT_DIR}/cls/{{classifier}}/t{{seed}}/{{point}}/metrics.json",
        logits=f"{SPLIT_DIR}/cls/{{classifier}}/t{{seed}}/{{point}}/logits.npz",
    params:
        job=lambda wc: as_json(classifier_job(config, wc.classifier, wc.point)),
        info=_classifier_info,
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

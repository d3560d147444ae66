# Experiment sweeps (config `sweeps:`, rvi.sweeps): one training job per experiment, each with the swept
# stage's inputs, resources and notebook, into results/{study}/sweeps/{experiment}/; `snakemake sweep`
# runs them all and collects results/{study}/sweeps/metrics.csv (one row per experiment).
# Each job's params hold only its experiment's merged stage section: editing one experiment reruns it alone.
# Paths and helpers: the "Sweeps" block of common.smk.

rule sweep:
    localrule: True
    input:
        sweep_targets,


if SWEEP_STAGE == "train_rna":

    rule train_rna_sweep:
        input:
            unpack(train_rna_qc_inputs),
            rna=out("rna.h5ad"),
            scrublet=out("scrublet.csv"),
        output:
            **SWEEP_MODEL,
            model=directory(SWEEP_MODEL_DIR),
        wildcard_constraints:
            experiment=_SWEEP_WILDCARD,
        log:
            log_path("train_rna_sweep/{experiment}"),
        benchmark:
            bench_path("train_rna_sweep/{experiment}")
        params:
            cfg=sweep_cfg,
        threads: threads_of("train_rna")
        resources:
            **RES.rule_resources("train_rna"),
        run:
            run_rule("train_rna", input, output, params, log, threads)


if SWEEP_STAGE == "train_multimodal":

    rule train_multimodal_sweep:
        input:
            rna=out("rna.h5ad"),
            atac=out("atac.h5ad"),
            cres=out("cres.csv"),
            cells=RNA_MODEL["cells"],
            genes=RNA_MODEL["genes"],
            annotation=out("annotation.csv"),
        output:
            **SWEEP_MODEL,
            model=directory(SWEEP_MODEL_DIR),
        wildcard_constraints:
            experiment=_SWEEP_WILDCARD,
        log:
            log_path("train_multimodal_sweep/{experiment}"),
        benchmark:
            bench_path("train_multimodal_sweep/{experiment}")
        params:
            cfg=sweep_cfg,
        threads: threads_of("train_multimodal")
        resources:
            **RES.rule_resources("train_multimodal"),
        run:
            run_rule("train_multimodal", input, output, params, log, threads)


if SWEEP_STAGE:

    rule sweep_notebook:
        input:
            unpack(sweep_notebook_inputs),
        output:
            notebook=SWEEP_NOTEBOOK,
        wildcard_constraints:
            experiment=_SWEEP_WILDCARD,
        log:
            log_path("sweep_notebook/{experiment}"),
        benchmark:
            bench_path("sweep_notebook/{experiment}")
        params:
            name=lambda wildcards: f"{SWEEP_STAGE} (sweep {wildcards.experiment})",
            study=lambda wildcards: f"{CFG['study']} (sweep {wildcards.experiment})",
            labels=canonical(CFG["labels"]),
            covariates=canonical(CFG["covariates"]),
        threads: threads_of("notebook")
        resources:
            **RES.rule_resources("notebook"),
        run:
            run_rule("notebook", input, output, params, log, threads)

    rule sweep_metrics:
        localrule: True
        input:
            metrics=[sweep_out("metrics.csv", name) for name in SWEEP_EXPERIMENTS],
            history=[sweep_out("history.csv", name) for name in SWEEP_EXPERIMENTS],
        output:
            table=out("sweeps/metrics.csv"),
        log:
            log_path("sweep_metrics"),
        benchmark:
            bench_path("sweep_metrics")
        params:
            stage=SWEEP_STAGE,
            experiments=list(SWEEP_EXPERIMENTS),
            overrides=canonical(SWEEP_EXPERIMENTS),
        threads: 1
        resources:
            **RES.rule_resources("notebook"),
        run:
            run_rule("sweep_metrics", input, output, params, log, threads)

# Experiment sweeps (config `sweeps:`, rvi.workflow.sweeps): one training job per experiment, each with the swept
# stage's inputs, resources and notebook, into results/{study}/sweeps/{experiment}/; `snakemake sweep`
# runs them all and collects results/{study}/sweeps/metrics.csv (one row per experiment).
# Each job's params hold only its experiment's merged stage section: editing one experiment reruns it alone.
# Paths and helpers: the "Sweeps" block of common.smk.

rule sweep:
    localrule: True
    input:
        sweep_targets,


# The swept stage's own rule (inputs, threads, resources, run block), with the experiment's outputs and params.
if SWEEP_STAGE == "train_rna":

    use rule train_rna as train_rna_sweep with:
        output: **SWEEP_OUTPUTS
        log: SWEEP_LOG
        benchmark: SWEEP_BENCH
        params: cfg=sweep_cfg


if SWEEP_STAGE == "train_multimodal":

    use rule train_multimodal as train_multimodal_sweep with:
        output: **SWEEP_OUTPUTS
        log: SWEEP_LOG
        benchmark: SWEEP_BENCH
        params: cfg=sweep_cfg


if SWEEP_STAGE:

    rule sweep_notebook:
        input:
            unpack(sweep_notebook_inputs),
        output:
            notebook=SWEEP_NOTEBOOK,
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

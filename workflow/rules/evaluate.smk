# Evaluation: the baselines (separate jobs with their own resources; scVI is a GPU stage), every
# embedding scored side by side (`snakemake evaluate`) and the one-file study report (`snakemake report`).


rule baseline_pca:
    input:
        rna=out("rna.h5ad"),
        cells=RNA_MODEL["cells"],
        genes=RNA_MODEL["genes"],
    output:
        embedding=BASELINE_EMBEDDINGS["pca"],
        info=out("baselines/pca_info.csv"),
    log:
        log_path("baseline_pca"),
    benchmark:
        bench_path("baseline_pca")
    params:
        cfg=baseline_params("pca"),
    threads: threads_of("baseline_pca")
    resources:
        **RES.rule_resources("baseline_pca"),
    run:
        run_rule("baseline_pca", input, output, params, log, threads)


rule baseline_harmony:
    input:
        rna=out("rna.h5ad"),
        cells=RNA_MODEL["cells"],
        pca=BASELINE_EMBEDDINGS["pca"],
    output:
        embedding=BASELINE_EMBEDDINGS["harmony"],
    log:
        log_path("baseline_harmony"),
    benchmark:
        bench_path("baseline_harmony")
    params:
        cfg=baseline_params("harmony"),
    threads: threads_of("baseline_harmony")
    resources:
        **RES.rule_resources("baseline_harmony"),
    run:
        run_rule("baseline_harmony", input, output, params, log, threads)


rule baseline_scvi:
    input:
        rna=out("rna.h5ad"),
        cells=RNA_MODEL["cells"],
        genes=RNA_MODEL["genes"],
    output:
        embedding=BASELINE_EMBEDDINGS["scvi"],
        history=out("baselines/scvi_history.csv"),
    log:
        log_path("baseline_scvi"),
    benchmark:
        bench_path("baseline_scvi")
    params:
        cfg=baseline_params("scvi"),
    threads: threads_of("baseline_scvi")
    resources:
        **RES.rule_resources("baseline_scvi"),
    run:
        run_rule("baseline_scvi", input, output, params, log, threads)


rule evaluate:
    input:
        unpack(evaluate_inputs),
    output:
        **{k: v for k, v in EVALUATION.items() if k != "per_cell"},
        per_cell=directory(EVALUATION["per_cell"]),
    log:
        log_path("evaluate"),
    benchmark:
        bench_path("evaluate")
    params:
        cfg=params_of("evaluate"),
    threads: threads_of("evaluate")
    resources:
        **RES.rule_resources("evaluate"),
    run:
        run_rule("evaluate", input, output, params, log, threads)


rule report:
    input:
        unpack(report_inputs),
    output:
        report=out("report.html"),
    log:
        log_path("report"),
    benchmark:
        bench_path("report")
    params:
        cfg=report_params(),
    threads: threads_of("report")
    resources:
        **RES.rule_resources("report"),
    run:
        run_rule("report", input, output, params, log, threads)

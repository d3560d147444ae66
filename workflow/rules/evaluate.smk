# Evaluation: the baselines (separate jobs with their own resources; scVI is a GPU stage), every
# embedding scored side by side (score_embeddings; target `snakemake evaluate`: baselines, metrics and
# the notebook) and the one-file study report (study_report; target `snakemake report`).


rule baseline_pca:
    input:
        rna=out("rna.h5ad"),
        cells=RNA_MODEL["cells"],
        genes=RNA_MODEL["genes"],
    output:
        **OUTPUTS["baseline_pca"],
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
        pca=FILES["baseline_pca"]["embedding"],
    output:
        **OUTPUTS["baseline_harmony"],
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
        **OUTPUTS["baseline_scvi"],
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


rule score_embeddings:
    input:
        unpack(evaluate_inputs),
    output:
        **OUTPUTS["score_embeddings"],
    log:
        log_path("score_embeddings"),
    benchmark:
        bench_path("score_embeddings")
    params:
        cfg=params_of("score_embeddings"),
    threads: threads_of("score_embeddings")
    resources:
        **RES.rule_resources("score_embeddings"),
    run:
        run_rule("score_embeddings", input, output, params, log, threads)


rule study_report:
    input:
        unpack(report_inputs),
    output:
        **OUTPUTS["study_report"],
    log:
        log_path("study_report"),
    benchmark:
        bench_path("study_report")
    params:
        cfg=params_of("study_report"),
    threads: threads_of("study_report")
    resources:
        **RES.rule_resources("study_report"),
    run:
        run_rule("study_report", input, output, params, log, threads)

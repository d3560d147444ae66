# Models and what is built on their latent spaces: RNA model, annotation, CREs, multimodal model.


rule train_rna:
    input:
        unpack(train_rna_qc_inputs),
        rna=out("rna.h5ad"),
        scrublet=out("scrublet.csv"),
    output:
        **OUTPUTS["train_rna"],
    log:
        log_path("train_rna"),
    benchmark:
        bench_path("train_rna")
    params:
        cfg=params_of("train_rna"),
    threads: threads_of("train_rna")
    resources:
        **RES.rule_resources("train_rna"),
    run:
        run_rule("train_rna", input, output, params, log, threads)


rule annotate:
    input:
        rna=out("rna.h5ad"),
        cells=RNA_MODEL["cells"],
        knn=RNA_MODEL["knn"],
    output:
        **OUTPUTS["annotate"],
    log:
        log_path("annotate"),
    benchmark:
        bench_path("annotate")
    params:
        cfg=params_of("annotate"),
    threads: threads_of("annotate")
    resources:
        **RES.rule_resources("annotate"),
    run:
        run_rule("annotate", input, output, params, log, threads)


rule select_cres:
    input:
        atac=out("atac.h5ad"),
        annotation=out("annotation.csv"),
    output:
        **OUTPUTS["select_cres"],
    log:
        log_path("select_cres"),
    benchmark:
        bench_path("select_cres")
    params:
        cfg=params_of("select_cres"),
    threads: threads_of("select_cres")
    resources:
        **RES.rule_resources("select_cres"),
    run:
        run_rule("select_cres", input, output, params, log, threads)


rule train_multimodal:
    input:
        rna=out("rna.h5ad"),
        atac=out("atac.h5ad"),
        cres=out("cres.csv"),
        cells=RNA_MODEL["cells"],
        genes=RNA_MODEL["genes"],
        annotation=out("annotation.csv"),
    output:
        **OUTPUTS["train_multimodal"],
    log:
        log_path("train_multimodal"),
    benchmark:
        bench_path("train_multimodal")
    params:
        cfg=params_of("train_multimodal"),
    threads: threads_of("train_multimodal")
    resources:
        **RES.rule_resources("train_multimodal"),
    run:
        run_rule("train_multimodal", input, output, params, log, threads)

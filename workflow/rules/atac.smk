# ATAC: per-sample fragments (or 10x Peaks) -> cell x feature matrix, then merge + per-cell QC table.


rule load_atac:
    input:
        unpack(sample_atac_input),
        unpack(atac_reference_inputs),
        rna=out("rna.h5ad"),
    output:
        **OUTPUTS["load_atac"],
    log:
        log_path("load_atac/{sample}"),
    benchmark:
        bench_path("load_atac/{sample}")
    params:
        cfg=params_of("load_atac"),
        sample=sample_row,
    threads: threads_of("load_atac")
    resources:
        **RES.rule_resources("load_atac"),
    run:
        run_rule("load_atac", input, output, params, log, threads)


rule merge_atac:
    input:
        samples=per_sample("atac/{sample}.h5ad"),
    output:
        **OUTPUTS["merge_atac"],
    log:
        log_path("merge_atac"),
    benchmark:
        bench_path("merge_atac")
    params:
        cfg=params_of("merge_atac"),
    threads: threads_of("merge_atac")
    resources:
        **RES.rule_resources("merge_atac"),
    run:
        run_rule("merge_atac", input, output, params, log, threads)

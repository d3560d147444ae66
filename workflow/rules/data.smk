# RNA inputs: demo data (optional), per-sample loading, merge + library QC, Scrublet per library.

if DEMO:

    checkpoint demo_data:
        output:
            sheet=f"{DEMO_DIR}/samples.tsv",
            truth=f"{DEMO_DIR}/ground_truth.csv",
            cre_truth=f"{DEMO_DIR}/cre_truth.csv",
            chrom_sizes=f"{DEMO_DIR}/chrom_sizes.tsv",
            gene_annotation=f"{DEMO_DIR}/genes.gtf",
            pairs=f"{DEMO_DIR}/subtype_pairs.csv",
        log:
            log_path("demo_data"),
        benchmark:
            bench_path("demo_data")
        params:
            cfg=params_of("demo_data"),
        threads: threads_of("demo_data")
        resources:
            **RES.rule_resources("demo_data"),
        run:
            run_rule("demo_data", input, output, params, log, threads)


rule load_rna:
    input:
        unpack(sample_counts_input),
    output:
        **OUTPUTS["load_rna"],
    log:
        log_path("load_rna/{sample}"),
    benchmark:
        bench_path("load_rna/{sample}")
    params:
        cfg=params_of("load_rna"),
        sample=sample_row,
    threads: threads_of("load_rna")
    resources:
        **RES.rule_resources("load_rna"),
    run:
        run_rule("load_rna", input, output, params, log, threads)


rule merge_rna:
    input:
        samples=per_sample("rna/{sample}.h5ad"),
    output:
        **OUTPUTS["merge_rna"],
    log:
        log_path("merge_rna"),
    benchmark:
        bench_path("merge_rna")
    params:
        cfg=params_of("merge_rna"),
    threads: threads_of("merge_rna")
    resources:
        **RES.rule_resources("merge_rna"),
    run:
        run_rule("merge_rna", input, output, params, log, threads)


rule scrublet:
    input:
        rna=out("rna.h5ad"),
    output:
        **OUTPUTS["scrublet"],
    log:
        log_path("scrublet/{library}"),
    benchmark:
        bench_path("scrublet/{library}")
    params:
        cfg=params_of("scrublet"),
        library="{library}",
    threads: threads_of("scrublet")
    resources:
        **RES.rule_resources("scrublet"),
    run:
        run_rule("scrublet", input, output, params, log, threads)


rule merge_scrublet:
    input:
        tables=per_library("scrublet/{library}.csv"),
    output:
        **OUTPUTS["merge_scrublet"],
    log:
        log_path("merge_scrublet"),
    benchmark:
        bench_path("merge_scrublet")
    threads: 1
    resources:
        **RES.rule_resources("merge_scrublet"),
    run:
        run_rule("merge_scrublet", input, output, params, log, threads)

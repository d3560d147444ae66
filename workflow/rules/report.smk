# Notebooks (papermill), the integrated study file and the ground-truth report of simulated studies.


rule integrated_output:
    input:
        unpack(integrated_inputs),
    output:
        **OUTPUTS["integrated_output"],
    log:
        log_path("integrated_output"),
    benchmark:
        bench_path("integrated_output")
    params:
        study=CFG["study"],
    threads: threads_of("integrated_output")
    resources:
        **RES.rule_resources("integrated_output"),
    run:
        run_rule("integrated_output", input, output, params, log, threads)


rule notebook:
    input:
        unpack(notebook_inputs),
    output:
        notebook=out("notebooks/{notebook}.ipynb"),
    log:
        log_path("notebook/{notebook}"),
    benchmark:
        bench_path("notebook/{notebook}")
    params:
        study=CFG["study"],
        labels=canonical(CFG["labels"]),
        covariates=canonical(CFG["covariates"]),
        extra=notebook_params,
    threads: threads_of("notebook")
    resources:
        **RES.rule_resources("notebook"),
    run:
        run_rule("notebook", input, output, params, log, threads, wildcards)


if GROUND_TRUTH:

    rule ground_truth_report:
        input:
            unpack(ground_truth_inputs),
        output:
            **OUTPUTS["ground_truth_report"],
        log:
            log_path("ground_truth_report"),
        benchmark:
            bench_path("ground_truth_report")
        params:
            cfg=params_of("ground_truth_report"),
        threads: threads_of("ground_truth_report")
        resources:
            **RES.rule_resources("ground_truth_report"),
        run:
            run_rule("ground_truth_report", input, output, params, log, threads)

"""One function per stage of the workflow: paths + params in, outputs written atomically.

The rules run these through :func:`rvi.workflow.runner.run_rule`, which finds each stage's function in
the stage registry (:mod:`rvi.workflow.registry`, ``"module:function"``) and calls it with the rule's
named input/output/params as keywords (``cfg`` is :func:`rvi.workflow.params.stage_params` of the stage:
its own config section plus the shared sections it reads). Each function can be called directly from
pytest or a notebook. Heavy libraries are imported inside the functions so that a job imports only what
its stage needs. Nothing here imports :mod:`rvi.workflow` (the workflow calls the stages, not the reverse).

Modules: :mod:`~rvi.stages.inputs` (demo data, loading, merges, Scrublet),
:mod:`~rvi.stages.models` (train_rna, train_multimodal and their helpers),
:mod:`~rvi.stages.labels` (annotate, select_cres), :mod:`~rvi.stages.export` (the integrated .h5ad / .h5mu),
:mod:`~rvi.stages.report` (ground truth, notebooks, sweep tables).
"""

# Source before `snakemake --profile profiles/lsf ...`: the LSF plugin reads this at start.
export SNAKEMAKE_LSF_MEMFMT=perjob

# Activates the project's software in a cluster job. Sourced (POSIX sh) by the profile's `precommand`
# before every job's `python -m snakemake ...`, in the directory Snakemake was started from (the
# repository root). Snakemake's conda:/envmodules: directives do not apply to our run: rules, so this
# is where a job gets its environment:
#
#   RVI_MODULES    environment modules to load first, space separated (e.g. "cuda/12.4 gcc/12");
#                  needs the `module` command (Lmod / Environment Modules) on the execution host
#   RVI_CONDA_ENV  a conda/mamba environment (name or prefix path) to activate, or else
#   RVI_VENV       a virtualenv folder to activate (default: .venv, the repository's own)
#
# Export them before `snakemake --profile profiles/lsf ...` (bsub -env all passes them to the jobs).
# Any failure prints why on stderr (the job's LSF log) and returns non-zero, so the job stops before
# Snakemake starts and the rule fails (instead of running with the wrong Python or without CUDA).

rvi_activate_fail() {
    echo "rvi activate.sh on $(hostname 2>/dev/null || echo '?') in $PWD: $*" >&2
    return 1
}

rvi_activate() {
    if [ -n "${RVI_MODULES:-}" ]; then
        if ! command -v module >/dev/null 2>&1; then
            # Non-interactive job shells may not have the `module` function yet: load its shell init.
            for rvi_init in "${MODULESHOME:-/nonexistent}/init/sh" /etc/profile.d/modules.sh \
                /usr/share/lmod/lmod/init/sh /usr/share/Modules/init/sh; do
                if [ -r "$rvi_init" ]; then
                    . "$rvi_init"
                    break
                fi
            done
        fi
        command -v module >/dev/null 2>&1 \
            || rvi_activate_fail "RVI_MODULES='$RVI_MODULES' is set but there is no 'module' command" \
            || return 1
        # shellcheck disable=SC2086  # one word per module
        module load $RVI_MODULES || rvi_activate_fail "'module load $RVI_MODULES' failed" || return 1
    fi

    if [ -n "${RVI_CONDA_ENV:-}" ]; then
        rvi_conda="${CONDA_EXE:-$(command -v conda 2>/dev/null || command -v mamba 2>/dev/null)}"
        [ -n "$rvi_conda" ] \
            || rvi_activate_fail "RVI_CONDA_ENV='$RVI_CONDA_ENV' is set but no conda is found (CONDA_EXE unset," \
                "no conda/mamba on PATH: add its module to RVI_MODULES)" \
            || return 1
        rvi_hook="$("$rvi_conda" shell.posix hook)" \
            || rvi_activate_fail "'$rvi_conda shell.posix hook' failed" || return 1
        eval "$rvi_hook"
        conda activate "$RVI_CONDA_ENV" \
            || rvi_activate_fail "'conda activate $RVI_CONDA_ENV' failed (conda: $rvi_conda)" || return 1
    else
        rvi_venv="${RVI_VENV:-.venv}"
        [ -r "$rvi_venv/bin/activate" ] \
            || rvi_activate_fail "no environment to activate: RVI_CONDA_ENV is not set and '$rvi_venv/bin/activate'" \
                "does not exist (set RVI_CONDA_ENV, or RVI_VENV to a virtualenv, or run 'make setup')" \
            || return 1
        . "$rvi_venv/bin/activate" || rvi_activate_fail "'. $rvi_venv/bin/activate' failed" || return 1
    fi

    # The job's interpreter must find the workflow's packages (cheap: no import, only a lookup).
    rvi_check="import importlib.util as u, sys; m = [n for n in ('rvi', 'snakemake') if u.find_spec(n) is None]"
    rvi_check="$rvi_check; m and sys.exit(sys.executable + ' cannot import ' + ', '.join(m))"
    python -c "$rvi_check" || rvi_activate_fail "the activated environment lacks the workflow's packages" || return 1
}

rvi_activate

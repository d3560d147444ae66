"""Config validation: schema errors name the key and value; sample-sheet problems stop the run early."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rvi.workflow import ConfigError, load_config, read_samples, sample_sheet_path, validate_config
from tests.workflow import REPO, snakemake

CONFIGS = ["demo", "test_tiny", "immune", "bone_marrow", "embryo"]
SHEET_COLUMNS = ["sample", "library", "dataset", "donor", "rna_path", "fragments_path", "labels_path"]


def load_yaml(name: str) -> dict:
    return yaml.safe_load((REPO / "config" / f"{name}.yaml").read_text())


def write_sheet(folder: Path, rows: list[list[str]]) -> Path:
    """A sample sheet whose input files exist (empty placeholders) unless a row says otherwise."""
    path = folder / "samples.tsv"
    lines = ["\t".join(SHEET_COLUMNS)]
    for row in rows:
        for rel in row[4:]:
            if rel and not rel.startswith("missing"):
                (folder / rel).parent.mkdir(parents=True, exist_ok=True)
                if rel.endswith(".tsv.gz"):  # fragments files are checked at start (bgzip, index)
                    _fragments(folder / rel)
                else:
                    (folder / rel).touch()
        lines.append("\t".join(row))
    path.write_text("\n".join(lines) + "\n")
    return path


def _fragments(path: Path) -> None:
    import pandas as pd

    from rvi.io import write_fragments

    frags = pd.DataFrame({"chrom": ["chr1"], "start": [10], "end": [90], "barcode": ["AAAC-1"], "count": [1]})
    write_fragments(path, frags)


def rows(n: int = 2) -> list[list[str]]:
    return [[f"s{i}", f"lib{i}", f"ds{i % 2}", f"d{i}", f"s{i}/m.h5", f"s{i}/f.tsv.gz", ""] for i in range(n)]


def study_config(sheet: Path, **overrides) -> dict:
    cfg = {"study": "unit", "sample_sheet": str(sheet), "labels": {"levels": ["l1", "l2"]}}
    cfg.update(overrides)
    return cfg


@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_configs_validate(name):
    cfg = load_config(load_yaml(name), check_sample_sheet=False)
    assert cfg["study"] == name.replace("test_", "") or cfg["study"] == name
    # Defaults are filled in, so each stage's params are the complete effective section.
    assert cfg["train_rna"]["training"]["validation_fraction"] > 0
    assert "n_neighbors" in cfg["train_multimodal"]["embedding"]


def test_defaults_do_not_alias_between_sections():
    cfg = validate_config({"study": "x", "demo_data": {"generate": True}})
    cfg["train_rna"]["model"]["module_kwargs"]["a"] = 1
    assert cfg["train_multimodal"]["model"]["module_kwargs"] == {}


def test_unknown_key_is_named_with_suggestion():
    raw = load_yaml("demo")
    raw["train_rna"]["model"]["n_hiden"] = 64
    with pytest.raises(ConfigError) as err:
        validate_config(raw)
    msg = str(err.value)
    assert "unknown key 'train_rna.model.n_hiden'" in msg
    assert "did you mean 'n_hidden'" in msg


def test_unknown_top_level_key():
    raw = load_yaml("demo")
    raw["trainrna"] = {}
    with pytest.raises(ConfigError, match=r"unknown key 'trainrna'; did you mean 'train_rna'"):
        validate_config(raw)


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (("train_rna", "training", "max_epochs"), 0, "'train_rna.training.max_epochs': 0"),
        (("train_rna", "training", "accelerator"), "tpu", "'train_rna.training.accelerator': 'tpu'"),
        (("train_rna", "training", "early_stopping"), "False", "'train_rna.training.early_stopping': 'False'"),
        (("merge_rna", "library_min_frac"), 1.5, "'merge_rna.library_min_frac': 1.5"),
        (("resources", "train_rna", "mem_mb"), "60G", "'resources.train_rna.mem_mb': '60G'"),
        (("load_atac", "matrix"), "bins", "'load_atac.matrix': 'bins'"),
    ],
)
def test_bad_value_is_named(path, value, expected):
    raw = load_yaml("demo")
    node = raw
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    with pytest.raises(ConfigError) as err:
        validate_config(raw)
    assert f"bad value for {expected}" in str(err.value)


def test_all_problems_reported_at_once():
    raw = load_yaml("demo")
    raw["train_rna"]["training"]["max_epochs"] = -1
    raw["annotate"]["resolutin"] = 1
    with pytest.raises(ConfigError) as err:
        validate_config(raw)
    assert len(err.value.problems) == 2


def test_unknown_resource_stage_rejected():
    raw = load_yaml("demo")
    raw["resources"]["train_rnaa"] = {"mem_mb": 1}
    with pytest.raises(ConfigError, match="unknown key 'resources.train_rnaa'"):
        validate_config(raw)


def test_missing_sample_sheet(tmp_path):
    with pytest.raises(ConfigError, match="sample sheet not found: 'sample_sheet' = .*nope.tsv"):
        load_config(study_config(tmp_path / "nope.tsv"))


def test_sample_sheet_required_without_demo():
    with pytest.raises(ConfigError, match="'sample_sheet' is required"):
        load_config({"study": "x"})


def test_demo_sheet_location_must_match(tmp_path):
    cfg = {"study": "x", "sample_sheet": "elsewhere.tsv", "demo_data": {"generate": True, "outdir": "resources/x"}}
    with pytest.raises(ConfigError, match="demo_data.generate writes the sheet to 'resources/x/samples.tsv'"):
        load_config(cfg)
    assert sample_sheet_path(validate_config({"study": "x", "demo_data": {"generate": True}})) == str(
        Path("resources/demo/samples.tsv")
    )


def test_duplicate_sample_ids(tmp_path):
    r = rows(3)
    r[2][0] = "s0"
    with pytest.raises(ConfigError, match=r"duplicate sample ids \['s0'\]"):
        load_config(study_config(write_sheet(tmp_path, r)))


def test_library_in_two_datasets(tmp_path):
    r = rows(3)
    r[2][1] = "lib0"  # lib0 is in ds0 (row 0); put it in ds1 as well
    r[2][2] = "ds1"
    with pytest.raises(ConfigError, match=r"library 'lib0'.*ds0.*ds1"):
        load_config(study_config(write_sheet(tmp_path, r)))


def test_missing_input_files_listed_together(tmp_path):
    r = rows(3)
    r[0][4] = "missing/a.h5"
    r[2][5] = "missing/b.tsv.gz"
    with pytest.raises(ConfigError) as err:
        load_config(study_config(write_sheet(tmp_path, r)))
    msg = str(err.value)
    assert "2 missing input file(s)" in msg
    assert "s0: rna_path" in msg and "s2: fragments_path" in msg


def test_fragments_not_needed_for_rna_only(tmp_path):
    r = rows(2)
    for row in r:
        row[5] = ""
    cfg = load_config(study_config(write_sheet(tmp_path, r), modalities=["rna"]))
    assert read_samples(cfg).index.tolist() == ["s0", "s1"]


def test_per_dataset_thresholds_must_name_known_datasets(tmp_path):
    cfg = study_config(write_sheet(tmp_path, rows(2)), cell_qc={"per_dataset": {"ds9": {"min_counts": 5}}})
    with pytest.raises(ConfigError, match=r"unknown dataset\(s\) \['ds9'\] in 'cell_qc.per_dataset'"):
        load_config(cfg)


def test_fragment_threshold_needs_atac(tmp_path):
    cfg = study_config(
        write_sheet(tmp_path, rows(2)),
        modalities=["rna"],
        cell_qc={"default": {"min_fragments": 100}},
    )
    with pytest.raises(ConfigError, match="min_fragments .* no 'atac'"):
        load_config(cfg)


def test_old_cell_qc_key_names_its_new_place():
    raw = load_yaml("demo")
    raw["train_rna"]["cell_qc"] = raw.pop("cell_qc")
    with pytest.raises(ConfigError, match="'train_rna.cell_qc' moved to the top-level section 'cell_qc'"):
        load_config(raw, check_sample_sheet=False)


def test_label_level_references_checked():
    raw = load_yaml("demo")
    raw["select_cres"]["level"] = "label_l9"
    with pytest.raises(ConfigError, match=r"'select_cres.level': 'label_l9' \(not one of labels.levels"):
        load_config(raw)


def test_snakemake_stops_before_any_job(tmp_path):
    """A bad key stops `snakemake -n` at parse time, naming the key; nothing is written."""
    raw = load_yaml("test_tiny")
    raw["train_rna"]["training"]["max_epoch"] = 3
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(raw))
    proc = snakemake(tmp_path, config, "-n", cores=1, timeout=120)
    assert proc.returncode != 0
    assert "unknown key 'train_rna.training.max_epoch'; did you mean 'max_epochs'" in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / "resources").exists()


def test_template_study_reports_missing_inputs(tmp_path):
    """Real-study templates pass the schema and stop on their (absent) cluster input files."""
    proc = snakemake(None, REPO / "config" / "immune.yaml", "-n", cores=1, timeout=120, cwd=REPO)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "missing input file(s)" in out and "/lustre/" in out
    assert "unknown key" not in out and "bad value" not in out


def test_empty_config_points_to_configfile():
    with pytest.raises(ConfigError, match="run with --configfile config/<study>.yaml"):
        load_config({})

"""DDP on CPU (2 gloo processes): each rank trains on its resident shard and early stopping stops both."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

_SCRIPT = """
import json, os, sys
import scvi
sys.path.insert(0, {root!r})
from tests.conftest import make_counts
from rvi import AmbientRegularizedSCVI

scvi.settings.seed = 0
adata = make_counts(n_cells=240, n_genes=30)
AmbientRegularizedSCVI.setup_anndata(adata, library_key="lib", dataset_key="ds")
model = AmbientRegularizedSCVI(adata, n_hidden=16, n_latent=4)
model.train(
    max_epochs=30, batch_size=64, train_size=0.75, accelerator="cpu", devices=2, strategy="ddp",
    data_path="resident", early_stopping=True, early_stopping_patience=2,
    # a delta no epoch can beat: the run must stop after 1 + patience epochs if early stopping is on
    early_stopping_min_delta=1e9, enable_progress_bar=False, log_save_dir={log_dir!r},
)
split = model.trainer.datamodule
out = {{
    "rank": model.trainer.global_rank,
    "epochs": model.trainer.current_epoch,
    "resident_rows": split._built["matrices"]["X"].shape[0],
    "n_train": len(split.train_idx),
    "reason": model.data_path_["reason"],
    # history_ is rank 0's logger; every rank has the callback's view of the monitored metric
    "best": float(model.trainer.early_stopping_callback.best_score),
    "last": float(model.trainer.callback_metrics["elbo_validation"]),
}}
with open(os.path.join({out_dir!r}, f"rank{{out['rank']}}.json"), "w") as f:
    json.dump(out, f)
"""


def test_ddp_two_cpu_ranks_shard_resident_data_and_stop_early_together(tmp_path):
    root = str(Path(__file__).resolve().parents[2])
    script = tmp_path / "ddp_train.py"
    script.write_text(_SCRIPT.format(root=root, out_dir=str(tmp_path), log_dir=str(tmp_path / "logs")))
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "WORLD_SIZE", "RANK", "MASTER_PORT")}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(root) / "src"), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r in ranks:
        # 180 training cells over 2 ranks: each rank's device holds its 90 + 30 validation cells only
        assert r["n_train"] == 180 and r["resident_rows"] == 90 + 30
        assert f"DDP rank {r['rank']} of 2" in r["reason"]
        assert r["epochs"] == 3  # stopped by early stopping (best at epoch 1, then patience 2), not at 30
    # the validation ELBO is reduced over ranks: both ranks saw the same values and so took the same decision
    assert ranks[0]["best"] == ranks[1]["best"] and ranks[0]["last"] == ranks[1]["last"]

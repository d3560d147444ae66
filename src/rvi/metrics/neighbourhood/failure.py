"""Per-cell failure modes of an embedding at each comparison level, and the most severe one per cell."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

#: Leaves from most to least severe; each cell reports its most severe non-ideal leaf over the levels.
FAILURE_SEVERITY = (
    "forced_merge",
    "false_merge",
    "wrong_pairing",
    "under_integration",
    "noisy",
    "merged_but_related",
    "ideal",
)
FAILURE_LEVELS = {"within_library": "same_library", "cross_library": "cross_library", "cross_dataset": "cross_dataset"}


def failure_modes(
    per_cell: pd.DataFrame,
    other_models: Sequence[pd.DataFrame] = (),
    corr_threshold: float | None = None,
    sd_threshold: float | None = None,
) -> pd.DataFrame:
    """Per-cell failure-mode leaves per level and the most severe one overall.

    Thresholds default to the 25th percentile of same-library correlation (``t``) and the median
    same-library pairwise sd (``s``). Per level, with average-profile correlation c, pairwise sd sd and
    neighbour fraction f of the level's mask:

    * no neighbours or NaN correlation (flat profile): not applicable, except that a cell without
      neighbours at a cross level is ``under_integration`` if another model gives it neighbours there
      with c >= t, and ``ideal`` otherwise (nothing to integrate with);
    * c >= t: ``ideal`` if sd <= s, else ``noisy`` (the average matches, single neighbours scatter);
    * within library, c < t: ``wrong_pairing`` if sd <= s (consistently among other profiles), else
      ``false_merge`` (a mixture of matching and non-matching neighbours);
    * across levels, t/2 <= c < t: ``merged_but_related`` (related but distinct states were joined);
      c < t/2: ``forced_merge`` if f >= 0.5 (mostly mismatched neighbours from other libraries),
      else ``wrong_pairing`` if sd <= s, else ``false_merge``.
    """
    pc = per_cell
    t = float(np.nanpercentile(pc["corr_same_library"], 25)) if corr_threshold is None else corr_threshold
    s = float(np.nanmedian(pc["pair_sd_same_library"])) if sd_threshold is None else sd_threshold
    out = pd.DataFrame(index=pc.index)
    for level, mask in FAILURE_LEVELS.items():
        c = pc[f"corr_{mask}"].to_numpy(dtype=np.float64)
        sd = pc[f"pair_sd_{mask}"].to_numpy(dtype=np.float64)
        f = pc[f"frac_{mask}"].to_numpy(dtype=np.float64)
        n = pc[f"n_{mask}"].to_numpy(dtype=np.float64)
        has = np.nan_to_num(n) > 0
        good = c >= t
        tight = ~(sd > s)  # a single neighbour (sd NaN) counts as tight
        leaf = np.full(len(pc), None, dtype=object)
        leaf[has & good & tight] = "ideal"
        leaf[has & good & ~tight] = "noisy"
        low = has & (c < t)  # NaN correlation (flat profile) stays unclassified: not a model failure
        if level == "within_library":
            leaf[low & tight] = "wrong_pairing"
            leaf[low & ~tight] = "false_merge"
        else:
            if np.isnan(n).all():
                out[level] = leaf
                continue
            related = low & (c >= t / 2)
            very_low = low & ~related
            leaf[related] = "merged_but_related"
            leaf[very_low & (f >= 0.5)] = "forced_merge"
            leaf[very_low & (f < 0.5) & tight] = "wrong_pairing"
            leaf[very_low & (f < 0.5) & ~tight] = "false_merge"
            others = [o[f"corr_{mask}"].to_numpy(dtype=np.float64) for o in other_models]
            if others:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    best_other = np.nanmax(np.column_stack(others), axis=1)
                found = np.nan_to_num(best_other, nan=-np.inf) >= t
            else:
                found = np.zeros(len(pc), dtype=bool)
            possible = np.nan_to_num(pc.get(f"n_target_{mask}", pd.Series(1, index=pc.index)).to_numpy()) > 0
            leaf[~has & possible & found] = "under_integration"
            leaf[~has & possible & ~found] = "ideal"
        out[level] = leaf
    rank = {name: i for i, name in enumerate(FAILURE_SEVERITY)}
    ranks = out.apply(lambda col: col.map(lambda v: rank.get(v, len(FAILURE_SEVERITY))))
    worst = ranks.min(axis=1).to_numpy()
    names = np.array([*FAILURE_SEVERITY, "not_applicable"], dtype=object)
    out["failure_mode"] = names[worst]
    out.attrs.update(corr_threshold=t, sd_threshold=s)
    return out

"""Ground-truth simulators: in-memory RNA / RNA+ATAC data and the 10x-format demo dataset.

Generative story (RNA), shared by every simulator here:

* Cell types form a 3-level tree: lineage (``cell_type_l1``, e.g. ``A``) -> type (``cell_type_l2``,
  ``A1``) -> subtype (``cell_type_l3`` == ``cell_type``, ``A1a``). Each node owns a disjoint gene
  program (up-regulated genes); a leaf's profile is ``softmax(base + effects of every node on its
  path)``, so siblings share everything but a few leaf genes.
* Libraries are nested in datasets. Each dataset has a per-gene lognormal scaling ``y`` (log-centred,
  sd ``gene_scaling_sd``); each library has its own ambient profile = mixture of the profiles of its
  cells, times per-gene lognormal noise, normalised to sum to 1; each library draws a centre ambient
  fraction uniformly in ``ambient_fraction`` and each cell jitters around it (clipped to the range).
* Cell size factor ``l_n`` (``true_library_size``) is lognormal; the rate is
  ``mu = l_n * ((1 - a_n) * profile + a_n * ambient_library) * y_dataset`` (the rvi model's
  ``l * (rho + s) * y``), and counts are negative binomial (Gamma-Poisson, inverse dispersion theta).
* Doublets are literally the sum of the counts of two simulated cells of different subtypes in the
  same droplet (same library, same ambient fraction); ``cell_type`` is the component with the larger
  size factor and ``doublet_partner_type`` the other one.
"""

from rvi.simulate._tree import LEVEL_KEYS, MT_GENES
from rvi.simulate.demo import LABEL_COLUMNS, main, simulate_demo, write_demo_dataset
from rvi.simulate.multiome import simulate_multiome
from rvi.simulate.rna import simulate_rna

__all__ = [
    "LABEL_COLUMNS",
    "LEVEL_KEYS",
    "MT_GENES",
    "main",
    "simulate_demo",
    "simulate_multiome",
    "simulate_rna",
    "write_demo_dataset",
]

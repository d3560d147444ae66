"""``python -m rvi.simulate --outdir DIR``: write the demo dataset."""

from rvi.simulate.demo import main

main()

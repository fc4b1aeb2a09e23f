"""The folder ``adabalance-run`` puts first on ``PYTHONPATH``; see :mod:`adabalance_hf.run`."""

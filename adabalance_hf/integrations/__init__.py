"""Integrations of AdaBalance with other libraries.

Each integration lives in its own subpackage and imports its library only when that subpackage is
imported, so ``import adabalance_hf`` stays cheap.
"""

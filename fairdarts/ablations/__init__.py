"""Ablations of original DARTS from the Fair DARTS paper, on the shared search space and loop.

The commands are the scripts ``darts/train_search.py`` and ``darts/random_search.py`` (also
``python -m fairdarts.ablations.cli``); this package holds their code, inside ``fairdarts`` so
that no top-level ``darts`` package shadows PyPI's ``darts``:

* :mod:`fairdarts.ablations.cli` -- the command: DARTS defaults, ``--noise_darts``,
  ``--random_search``, ``--reweight``;
* :mod:`fairdarts.ablations.config` -- its options, a subclass of
  :class:`fairdarts.search.config.SearchConfig`;
* :mod:`fairdarts.ablations.searcher` -- :class:`fairdarts.search.searcher.Searcher` with the
  noise and reweight hooks;
* :mod:`fairdarts.ablations.noise`, :mod:`fairdarts.ablations.random_search`,
  :mod:`fairdarts.ablations.reweight` -- the pieces.
"""

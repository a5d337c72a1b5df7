"""Ablations of original DARTS from the Fair DARTS paper, on the shared search space and loop.

* :mod:`darts.train_search` -- the command (``python darts/train_search.py`` or
  ``python -m darts.train_search``): DARTS defaults, ``--noise_darts``, ``--random_search``,
  ``--reweight``;
* :mod:`darts.config` -- its options, a subclass of :class:`fairdarts.search.config.SearchConfig`;
* :mod:`darts.searcher` -- :class:`fairdarts.search.searcher.Searcher` with the noise and
  reweight hooks;
* :mod:`darts.noise`, :mod:`darts.random_search`, :mod:`darts.reweight` -- the pieces.
"""

"""Training callbacks that film a run while it trains.

``layerfilm.integrations.transformers.LayerfilmCallback`` (a ``transformers.TrainerCallback``)
and ``layerfilm.integrations.lightning.LayerfilmCallback`` (a Lightning ``Callback``): each saves
the step-0 weights in the run's own layout, brings the film up to date after each save in a
separate low-priority process (``layerfilm watch --once``), and makes the final film (and
publishes it, if asked) at the end.  What they share is in :mod:`._runner`; this package
imports neither training library: each module imports its own.
"""

"""The pure core: upload events, verdicts and dead letters, the pipeline's ports and stages,
face tracks, score aggregation, calibration (applying one) and the takedown policy.

Plain Python and numpy: nothing here imports kafka, torch or decord, or any other package
of the worker, so every decision can be re-derived and unit-tested from its inputs alone.
``tests/unit/test_layout.py`` checks that.
"""

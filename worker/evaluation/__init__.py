"""Evaluating a detector on labelled videos, and the figures calibration is fitted from.

``datasets`` reads the benchmark layouts, ``run`` scores every video once (resumably) into
``predictions``, ``metrics`` and ``report`` turn those into figures, ``roc_plot`` draws the
curve, ``commands`` is the CLI. Nothing here but ``run.PipelineScorer``'s caller needs torch.
"""

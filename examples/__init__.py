"""Runnable example jobs; each needs no external service.

Each module has ``build(**params) -> Dag`` (so ``python -m engine run examples.minimal:build
--param count=1000`` runs it) and a ``main()`` (``python -m examples.minimal``):

* ``examples.minimal``: generated ticks -> filter -> map -> count.
* ``examples.windowed_bars``: disordered ticks with some late ones -> key by symbol ->
  1-second OHLCV bars in a CSV file, late ticks in another.
* ``examples.realtime_store``: a paced tick stream -> bars -> a store with a bounded write
  queue drained slowly; the sink pauses at the queue's high watermark, backpressure reaches
  the source, and the Prometheus metrics show it while the job runs.
"""

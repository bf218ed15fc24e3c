"""Tools beside the library, for the command line (``mlcl bench``): not imported by the core
(``mlcl.engine``, ``mlcl.methods``, ...) nor by the book's chapters.

- :mod:`mlcl.tools.bench`: throughput, FLOPs, model FLOP utilisation and memory traffic of a
  preset's training step, and the speed of its data pipeline alone.
"""

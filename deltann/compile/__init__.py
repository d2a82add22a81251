"""Builds: TVM Relax import (frontends.py) and a pipeline per named setting (settings.py,
pipeline.py). Builds happen on the board that runs them."""

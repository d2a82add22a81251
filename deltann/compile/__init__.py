"""Builds: TVM Relax import (frontends.py) and a pipeline per named setting (settings.py,
pipeline.py), the settings composed from the pass catalogue (catalogue.py: the seed's
Relay passes and their Relax counterparts), tuning-free CPU schedules (schedules.py),
per-pass ablation tables (ablation.py) and delta-debugging bisection between two
settings (bisect.py). Builds happen on the board that runs them."""

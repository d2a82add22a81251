"""Builds: the one TVM path (pipeline.py: import through a frontend, frontends.py; the
board's target; a build per named setting, settings.py; the Relax VM), the settings
composed from the pass catalogue (catalogue.py: the seed's Relay passes and their Relax
counterparts), the target's tuning-free schedule that ends every setting (schedules.py)
and delta-debugging bisection between two settings (bisect.py). The per-pass ablation
tables read the store, so they live in deltann/analysis/pass_tables.py. Builds happen on the
board that runs them."""

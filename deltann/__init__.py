"""DeltaNN: does my image-recognition model still give the same answers, at the same
speed, after a framework change, a conversion, a compiler setting or a new board?

The package follows one flow (see DESIGN.md): study -> plan -> artifacts (zoo, convert)
-> builds (compile) -> runs (runtimes, fleet) -> store -> analysis -> report. Its imports
are layered, lowest first: foundation (this module, errors, ``core``, the store) ->
artifacts -> builds -> runtimes -> study -> plan -> runs -> analysis -> report ->
commands; no module imports a later layer (README.md, "Layout"; tests/test_layers.py).
Heavy frameworks are imported inside the functions that need them, so importing
``deltann`` and running the analysis layer stays fast.
"""

__version__ = "0.1.0"

#: Version of the results-store layout and column set; bump with a migration.
SCHEMA_VERSION = 3

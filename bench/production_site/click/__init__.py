"""Not click: on the benchmark daphnes' ``PYTHONPATH`` ahead of the virtualenv, so
``import click`` fails there as it does in a production install (only the dev tools,
import-linter, bring click). Where autobahn can import click it styles the arguments of
a debug line, disabled or not, for every websocket frame it sends: about a tenth of a
busy process's CPU that users do not pay."""

raise ImportError("click is left out of the benchmarks' servers, as in production")

"""Loaded by tests/component/pytest.ini (``-p``): with no path on the command line, run
this suite and nothing else.

With ``-c tests/component/pytest.ini`` the rootdir is tests/component, and pytest uses
``testpaths`` only when it runs from the rootdir: started from the repository's root it
would collect every test there, the product's too, under the component's settings. So
the suite's own directory becomes the path, early enough for its conftest.py to be a
top-level one (its ``pytest_plugins`` and fixture overrides apply).
"""

from __future__ import annotations

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config, args: list[str]) -> None:
    if not early_config.known_args_namespace.file_or_dir:
        suite = str(early_config.rootpath)
        early_config.known_args_namespace.file_or_dir.append(suite)
        args.append(suite)

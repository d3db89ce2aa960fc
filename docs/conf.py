"""Sphinx configuration: the API reference (autodoc, from the docstrings) and the Markdown pages
(MyST). Build: ``tox -e docs``, or ``python -m sphinx -W -b html docs docs/_build/html``;
``tests/test_docs.py`` builds it with warnings as errors."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.abspath(".."))  # the package from this checkout

import dtm_executor  # noqa: E402

project = "dtm_executor"
author = "the dtm_executor authors"
copyright = "the dtm_executor authors, LGPL-3.0-or-later"
release = version = dtm_executor.__version__

extensions = ["sphinx.ext.autodoc", "myst_parser"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# Links such as ``[mpi.md](mpi.md#host-files)`` between the pages, as on GitHub.
myst_heading_anchors = 3
# the pages link to files of the repository (examples, benchmarks): not documents
suppress_warnings: list[str] = []

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"show-inheritance": True}

html_theme = "alabaster"
html_static_path: list[str] = []
html_title = f"dtm_executor {release}"

"""Analysis: run directories -> tidy frames -> tables, charts, figures, notebook and report page.

Reads nothing but run directories (docs/run-directory.md); ``mamlpp report`` runs it all.
"""

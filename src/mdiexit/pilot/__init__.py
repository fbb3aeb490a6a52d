"""The pilot: measure a site in minutes and report what mdi-exit gains (pilot/run.py, pilot/report.py)."""

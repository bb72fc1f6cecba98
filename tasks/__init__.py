"""Prefect tasks: thin wrappers around `docre` (which never imports Prefect).

Each task adds only orchestration concerns (retries, logging, artifacts,
caching policy) and calls one library function.
"""

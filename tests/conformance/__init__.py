"""Third-party drivers' own test suites, run directly and through ``ptsh proxy db --tunnel``.

``suites.py`` pins them (version, sdist SHA-256, how they find their server); ``fetch.py``
downloads and installs them into a cache; ``deploy.py`` stands up PostgreSQL and a whole
pteleport deployment; ``run.py`` runs a suite against one endpoint; ``compare.py``,
``classify.py`` and ``allowlist.py`` say what differs and why; ``report.py`` writes the
side-by-side report. ``python -m tests.conformance`` (``./scripts/conformance``) runs it all.
"""

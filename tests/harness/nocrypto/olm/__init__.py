"""Stands in for python-olm in the maubot that must run without crypto.

Put first on that maubot's PYTHONPATH by MaubotServer(crypto=False): importing it fails as a
missing package does, so maubot and mautrix take their "encryption dependencies not installed"
path although the dev venv has python-olm for the encrypted-room tests.
"""

raise ImportError("python-olm is not installed (test shim)")

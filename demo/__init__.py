"""`make demo`: the whole product on loopback, a scripted conversation, then a live homeserver.

It reuses the test harness (tests/harness): a real Synapse, a real maubot 0.6 server, and the
plugin uploaded through the management API exactly as the admin UI does.
"""

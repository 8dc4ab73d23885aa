"""Test harness: a real Synapse, a real maubot server and Matrix users, all on loopback."""

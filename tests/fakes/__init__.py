"""Local stand-ins for agent servers, on 127.0.0.1, started by the tests."""

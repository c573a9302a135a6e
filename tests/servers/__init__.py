"""Real servers the tests start on 127.0.0.1 (each handle stops what it started)."""

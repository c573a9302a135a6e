"""Versioned pipeline API. Pure: no I/O, no kubernetes or kopf imports."""

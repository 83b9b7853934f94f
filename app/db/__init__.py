"""Durable state: the schema (``schema``), the engine and sessions (``session``), and the operations on them."""

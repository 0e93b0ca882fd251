"""Example campaign files, shipped as package data (see docs/loadtest.md)."""

"""Provenance: the C2PA Content Credentials an upload carries, read in isolation."""

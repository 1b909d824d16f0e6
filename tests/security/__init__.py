"""Hardening: a table-driven corpus of bad inputs, mixed good/bad runs and a fuzzed spec parser."""

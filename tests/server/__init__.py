"""Tests of the single-key server: fhe_server/ and server.py."""

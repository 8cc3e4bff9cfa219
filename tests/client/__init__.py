"""Tests of the client library: fhe_client/, backend.py and credit_portfolio.py."""

"""Tests of the cluster: fhe_server/cluster.py, the Redis store and nginx."""

"""Tests of the wire contracts: contracts/."""

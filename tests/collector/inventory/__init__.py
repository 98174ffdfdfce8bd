"""Tests of the inventory: its models and its loader."""

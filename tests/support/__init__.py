"""Test helpers: real servers and processes started on free ports, stopped on teardown."""

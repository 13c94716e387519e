"""Benchmarks of the training app (not tests): `python -m bench [NAME ...]`, or `make bench`.

Every number is measured in the same run as its baseline, and reported as a
ratio against it, so the tables compare like with like on whatever machine
runs them.
"""

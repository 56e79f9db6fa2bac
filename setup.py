"""Only for the optional C fast path of the stream scanner; everything else is in pyproject.toml.

optional=True: where no C compiler is available the pure-Python scanner is used instead."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("redis_backup.wire._scan", ["redis_backup/wire/_scan.c"], optional=True)])

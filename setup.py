"""Declares the optional C extension behind ``storage.commp``; all other metadata is in
pyproject.toml. ``optional=True``: without a compiler or OpenSSL headers the build skips it and
``storage.commp`` falls back to its pure-Python path."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "storage._commp",
            sources=["storage/_commp.c"],
            libraries=["crypto"],
            optional=True,
        )
    ]
)

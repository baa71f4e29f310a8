"""Build the optional C accelerator; everything else is configured in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        # optional: without a C compiler or OpenSSL headers the install goes on, and
        # domain/merkle.py hashes through hashlib instead (same results, slower)
        Extension("domain._sha256batch", ["domain/_sha256batch.c"], libraries=["crypto"], optional=True),
        # optional: without SQLite's headers verification reads the index columns through Python
        Extension("domain._sqlitescan", ["domain/_sqlitescan.c"], libraries=["sqlite3"], optional=True),
    ]
)

"""The optional compiled build: ``WEBHOOKBUS_COMPILE=1`` compiles the request path with mypyc.

Everything else about the package is in pyproject.toml.  Without the variable (``pip install
-e .``, every development install) the package is pure Python.  With it, the modules below
become C extensions shipped next to their sources, which Python imports first: the same code,
type-checked by mypy and run without the interpreter's dispatch (bench/README.md: ~30 us less
CPU per request).  ``make compiled`` builds it; the build needs mypy and a C compiler, and
``make test`` runs the suite against it too.

A module belongs here when it runs per request and mypyc can take it: no pydantic model (mypyc
emits C that does not compile for them) and no class that interpreted code subclasses unless it
says so (``mypyc_attr(allow_interpreted_subclasses=True)``).
"""

import os

from setuptools import setup

COMPILED = [
    "webhookbus/http/app.py",
    "webhookbus/http/urls.py",
    "webhookbus/http/deadlines.py",
    "webhookbus/signing.py",
    "webhookbus/events.py",
    "webhookbus/routing.py",
    "webhookbus/log.py",
    "webhookbus/delivery/delivery.py",
    "webhookbus/delivery/claims.py",
    "webhookbus/delivery/dedup.py",
    "webhookbus/delivery/records.py",
]

if os.environ.get("WEBHOOKBUS_COMPILE") == "1":
    from mypyc.build import mypycify

    setup(ext_modules=mypycify(COMPILED, opt_level="3"))
else:
    setup()

"""
Packaging for HQ: the ``hq`` package, the ``hq`` console script, the twistd plugin
``hq`` (``twisted/plugins/hq_plugin.py``), the web UI files (``ui/``, installed
as the data package ``hq_ui``) and the SDK package ``hq_sdk`` (``sdk/src/hq_sdk``, also
its own distribution ``hq-sdk``: sdk/pyproject.toml), which ``hq.client`` and ``hq.sdk``
use. In a checkout, the symbolic link ``hq_sdk -> sdk/src/hq_sdk`` makes it importable
from the top directory, as the compat editable install (``editable_mode=compat``) and the
tests' server processes need.
"""

from setuptools import find_packages, setup

setup(
    name="hq-server",
    version="0.1.0",
    description="A durable HTTP job queue server on Twisted, compatible with kohkimakimoto/hq",
    python_requires=">=3.11",
    packages=[
        *find_packages(include=["hq", "hq.*"]),
        "twisted.plugins",
        "hq_ui",
        "hq_sdk",
    ],
    package_dir={"hq_ui": "ui", "hq_sdk": "sdk/src/hq_sdk"},
    package_data={
        "twisted": ["plugins/hq_plugin.py"],
        "hq": ["openapi.json", "py.typed"],
        "hq_ui": ["*", "**/*"],
        "hq_sdk": ["py.typed"],
    },
    include_package_data=True,
    install_requires=[
        "Twisted>=24.7",
        # hq.rendering renders Klein routes in Klein's place and reads its error
        # handlers (Klein._error_handlers): check a new Klein before raising this.
        "klein>=24.8,<25",
        "treq>=24.9",
        "attrs>=23.1",
        "google-re2>=1.1",
        "txaio>=23.1",
        "zope.interface>=6",
        "click>=8.2",
        "prometheus-client>=0.20",
        "psycopg[binary]>=3.2",
        "croniter>=6",
        "tzdata>=2024.1",
    ],
    extras_require={
        # The blocking and asyncio clients of hq_sdk (hq.sdk); the Twisted client and
        # the worker receiver need nothing more. Without the server: pip install ./sdk.
        "sdk": ["httpx>=0.27"],
        "test": [
            "httpx>=0.27",
            "flask>=3",
            "fastapi>=0.110",
            "uvicorn>=0.29",
            "ruff",
            "mypy",
            "mypy-zope",
            "hypothesis",
            "playwright",
            "schemathesis>=4",
            "standardwebhooks",
        ],
    },
    entry_points={"console_scripts": ["hq = hq.cli:main"]},
)

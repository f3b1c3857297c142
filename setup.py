"""
Packaging for HQ: the ``hq`` package, the ``hq`` console script, the twistd plugin
``hq`` (``twisted/plugins/hq_plugin.py``) and the web UI files (``ui/``, installed
as the data package ``hq_ui``).
"""

from setuptools import find_packages, setup

setup(
    name="hq-server",
    version="0.1.0",
    description="A durable HTTP job queue server on Twisted, compatible with kohkimakimoto/hq",
    python_requires=">=3.11",
    packages=[
        *find_packages(exclude=["tests", "tests.*", "benchmarks", "benchmarks.*"]),
        "twisted.plugins",
        "hq_ui",
    ],
    package_dir={"hq_ui": "ui"},
    package_data={
        "twisted": ["plugins/hq_plugin.py"],
        "hq": ["openapi.json", "py.typed"],
        "hq_ui": ["*", "**/*"],
    },
    include_package_data=True,
    install_requires=[
        "Twisted>=24.7",
        "klein>=24.8",
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
        # The blocking and asyncio clients of hq.sdk (the Twisted client and the
        # worker receiver need nothing more).
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

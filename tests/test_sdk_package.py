"""
The ``hq-sdk`` distribution on its own: ``pip install ./sdk`` into a fresh venv, with no
Twisted and no server code there, then ``hq_sdk`` against a real HQ server (push, a job run
to its end, schedules, the asyncio client, the receiver modules).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import venv

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.test_sdk_client import shared_server

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Run by the venv's python, from an empty directory (so nothing of the checkout is on
# sys.path): argv[1] the server's base URL, argv[2] the worker's URL.
SCRIPT = r"""
import asyncio, importlib.util, json, os, sys, time

assert importlib.util.find_spec("twisted") is None, "twisted is importable"
assert importlib.util.find_spec("hq") is None, "the server package hq is importable"

import hq_sdk
from hq_sdk import AsyncClient, Client, HQError, Schedule
from hq_sdk.dedup import MemoryDedupStore
from hq_sdk.receiver import Receiver
from hq_sdk.wsgi import wsgi_app
from hq_sdk.asgi import asgi_app

base, worker = sys.argv[1], sys.argv[2]
out = {"file": hq_sdk.__file__, "version": hq_sdk.__version__}
out["typed"] = os.path.exists(os.path.join(os.path.dirname(hq_sdk.__file__), "py.typed"))
with Client(base) as hq:
    out["server"] = hq.info().version
    job = hq.push({"url": worker + "/", "name": "from-hq-sdk"})
    for _ in range(200):
        job = hq.get(job.id)
        if job.status in ("success", "failure", "canceled"):
            break
        time.sleep(0.05)
    out["status"] = job.status
    schedule = hq.add_schedule("0 3 * * *", {"url": worker + "/"}, name="sdk-package")
    assert isinstance(schedule, Schedule)
    out["listed"] = schedule.id in [s.id for s in hq.schedules()]
    out["paused"] = hq.pause_schedule(schedule.id).paused
    out["deleted"] = hq.delete_schedule(schedule.id) == schedule.id
    try:
        hq.get("1")
    except HQError as e:
        out["error"] = e.status


async def main():
    async with AsyncClient(base) as hq:
        return (await hq.push({"url": worker + "/"}, delay=3600)).status

out["async"] = asyncio.run(main())
Receiver([], allow_unsigned=True, dedup=MemoryDedupStore())
out["twisted_loaded"] = any(m.split(".")[0] == "twisted" for m in sys.modules)
print(json.dumps(out))
"""


class SDKPackageTests(SynchronousTestCase):
    """
    ``pip install ./sdk`` in a fresh venv, and ``hq_sdk`` there against a real server.
    """

    def make_venv(self, where: str) -> str:
        """
        Create a venv with pip in ``where``; return its python. Skips when the standard
        library cannot make one (``ensurepip`` missing, as on Debian without python3-venv).
        """
        try:
            venv.create(where, with_pip=True)
        except (OSError, subprocess.CalledProcessError) as e:
            raise SkipTest(f"cannot create a venv with pip here: {e}") from None
        python = os.path.join(where, "bin", "python")
        if not os.path.exists(python):
            raise SkipTest("venv.create made no bin/python")
        return python

    def env(self) -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}

    def run_in(self, python: str, *args: str, cwd: str, timeout: float = 120) -> str:
        done = subprocess.run(
            [python, *args],
            cwd=cwd,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        self.assertEqual(
            done.returncode, 0, f"{args[:3]} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        )
        return done.stdout

    def test_install_and_use_without_twisted(self) -> None:
        """
        The distribution installs with its two dependencies (httpx and attrs), is typed,
        and its blocking and asyncio clients work where Twisted cannot be imported.
        """
        server, worker = shared_server("")
        work = tempfile.mkdtemp(prefix="hq-sdk-venv-")
        self.addCleanup(shutil.rmtree, work, True)
        python = self.make_venv(os.path.join(work, "venv"))
        # A copy, so the build leaves nothing (build/, *.egg-info) in the checkout; it also
        # shows that sdk/ holds everything the distribution needs.
        source = os.path.join(work, "sdk")
        shutil.copytree(os.path.join(TOP, "sdk"), source)
        self.run_in(python, "-m", "pip", "install", "-q", source, cwd=work)
        missing = subprocess.run(
            [python, "-c", "import sys, twisted; print(twisted.__path__, sys.path)"],
            cwd=work,
            env=self.env(),
            capture_output=True,
            text=True,
        )
        self.assertNotEqual(missing.returncode, 0, f"twisted in the SDK's venv: {missing.stdout}")
        requires = self.run_in(python, "-m", "pip", "show", "hq-sdk", cwd=work)
        self.assertIn("Requires: attrs, httpx", requires)
        output = self.run_in(python, "-c", SCRIPT, server.base, worker.url, cwd=work)
        result = json.loads(output.strip().splitlines()[-1])
        self.assertTrue(result.pop("file").startswith(os.path.join(work, "venv")))
        self.assertEqual(
            result,
            {
                "version": "0.1.0",
                "typed": True,
                "server": result["server"],
                "status": "success",
                "listed": True,
                "paused": True,
                "deleted": True,
                "error": 404,
                "async": "scheduled",
                "twisted_loaded": False,
            },
        )
        self.assertTrue(result["server"])


class ReExportTests(SynchronousTestCase):
    """
    ``hq.sdk`` (the SDK's former name) and ``hq.client`` give the objects of ``hq_sdk``.
    """

    def test_hq_sdk_is_hq_sdk(self) -> None:
        """Every public name of hq.sdk and its modules is the same object in hq_sdk."""
        import importlib

        import hq.client
        import hq.sdk
        import hq_sdk

        for name in hq_sdk.__all__:
            self.assertIs(getattr(hq.sdk, name), getattr(hq_sdk, name), name)
        self.assertEqual(hq.sdk.__all__, hq_sdk.__all__)
        for module in ("aio", "asgi", "blocking", "calls", "dedup", "models", "receiver"):
            old = importlib.import_module("hq.sdk." + module)
            new = importlib.import_module("hq_sdk." + module)
            public = [n for n in vars(new) if not n.startswith("_")]
            self.assertTrue(public)
            for name in public:
                self.assertIs(getattr(old, name), getattr(new, name), f"{module}.{name}")
        for name in ("HQError", "RemoteJob", "Schedule", "BatchPushError"):
            self.assertIs(getattr(hq.client, name), getattr(hq_sdk, name), name)

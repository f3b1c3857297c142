"""
Tests for hq.ui: the web UI's files, the page, and the root that puts the UI beside the API.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from klein import Klein
from treq.testing import StubTreq
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource

from hq.config import Config
from hq.model import STATUSES
from hq.ui import (
    IMMUTABLE,
    NO_CACHE,
    UIFiles,
    mount,
    normalise_basename,
    script_json,
    ui_resource,
    ui_source,
)

UI_DIR = Path(__file__).resolve().parent.parent / "ui"


class EchoAPI(Resource):
    """
    A stand-in API: a leaf that answers with the path it was given.
    """

    isLeaf = True

    def render(self, request: IRequest) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(
            {
                "api": True,
                "method": request.method.decode(),
                "path": "/" + "/".join(s.decode() for s in request.postpath),  # type: ignore[attr-defined]
                "prepath": [s.decode() for s in request.prepath],  # type: ignore[attr-defined]
            }
        ).encode()


class KleinAPI:
    """
    A stand-in API made with Klein, routed as the real one is.
    """

    app = Klein()

    @app.route("/")
    def info(self, request: IRequest) -> bytes:
        return b'{"version":"test"}'

    @app.route("/job/<raw_id>", methods=["GET"])
    def job(self, request: IRequest, raw_id: str) -> bytes:
        return json.dumps({"id": raw_id}).encode()


def client(basename: str = "/ui", api: IResource | None = None, **kwargs: Any) -> StubTreq:
    """
    Return a StubTreq over the mounted UI and ``api`` (default: EchoAPI).
    """
    ui = ui_resource(
        basename, kwargs.pop("version", "1.2.3"), kwargs.pop("commit_hash", "abc"), **kwargs
    )
    return StubTreq(mount(api or EchoAPI(), ui, basename))


class Response:
    """
    The parts of a response the tests look at.
    """

    def __init__(self, code: int, headers: dict[str, str], body: bytes) -> None:
        self.code = code
        self.headers = headers
        self.body = body

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")

    def json(self) -> Any:
        return json.loads(self.body)


class UITestCase(SynchronousTestCase):
    """
    Helpers to make requests through StubTreq.
    """

    def fetch(self, treq: StubTreq, url: str, method: str = "GET") -> Response:
        """
        Make one request without following redirects; return its response.
        """
        d = treq.request(  # type: ignore[attr-defined]
            method, "http://hq.test" + url, allow_redirects=False
        )
        response = self.successResultOf(d)
        body = self.successResultOf(response.content())
        headers = {
            name.decode().lower(): values[0].decode()
            for name, values in response.headers.getAllRawHeaders()
        }
        return Response(response.code, headers, body)

    def page_config(self, page: Response) -> Any:
        """
        Return the settings object the page embeds for its scripts.
        """
        match = re.search(
            r'<script id="hq-config" type="application/json">(.*?)</script>', page.text
        )
        assert match is not None, page.text
        return json.loads(match.group(1))


class IndexTests(UITestCase):
    """
    The page under the basename.
    """

    def test_index_served_under_each_basename(self) -> None:
        """The page is served at the basename with a slash, for one- and two-segment names."""
        for basename, prefix in [
            ("/ui", "/ui"),
            ("/ui/", "/ui"),
            ("ui", "/ui"),
            ("/admin/hq", "/admin/hq"),
            ("/admin/hq/", "/admin/hq"),
        ]:
            page = self.fetch(client(basename), prefix + "/")
            self.assertEqual(page.code, 200, basename)
            self.assertEqual(page.headers["content-type"], "text/html; charset=utf-8")
            self.assertIn("<title>HQ</title>", page.text)
            config = self.page_config(page)
            self.assertEqual(config["basename"], prefix)
            self.assertEqual(config["baseUrl"], prefix)
            self.assertEqual((config["version"], config["commitHash"]), ("1.2.3", "abc"))
            self.assertTrue(config["static"].startswith(prefix + "/static/"), config)
            self.assertIn(f'src="{config["static"]}/app.js"', page.text)
            self.assertIn(f'href="{prefix}/"', page.text)

    def test_basename_without_slash_redirects(self) -> None:
        """The basename without a trailing slash redirects to it with one, query kept."""
        treq = client("/admin/hq")
        response = self.fetch(treq, "/admin/hq")
        self.assertEqual(response.code, 301)
        self.assertEqual(response.headers["location"], "/admin/hq/")
        response = self.fetch(treq, "/admin/hq?term=abc&status=failure")
        self.assertEqual(response.headers["location"], "/admin/hq/?term=abc&status=failure")

    def test_unknown_paths_below_basename_serve_the_page(self) -> None:
        """Any other path below the basename gets the page, which routes itself."""
        treq = client("/ui")
        for path in ["/ui/jobs/123", "/ui/jobs/123/", "/ui/anything/else?x=1"]:
            page = self.fetch(treq, path)
            self.assertEqual(page.code, 200, path)
            self.assertEqual(self.page_config(page)["basename"], "/ui")

    def test_page_has_no_cache_and_a_strict_policy(self) -> None:
        """The page is revalidated every time and may only run its own scripts."""
        page = self.fetch(client(), "/ui/")
        self.assertEqual(page.headers["cache-control"], NO_CACHE.decode())
        self.assertIn("script-src 'self'", page.headers["content-security-policy"])
        self.assertEqual(page.headers["x-content-type-options"], "nosniff")

    def test_injected_values_are_escaped(self) -> None:
        """A version or basename holding markup cannot break out of the script or attribute."""
        evil = "</script><script>alert(1)</script>&\u2028"
        page = self.fetch(client("/a\"b'<c>", version=evil, commit_hash="<!--"), "/a\"b'<c>/")
        self.assertEqual(page.code, 200)
        self.assertNotIn("<script>alert(1)", page.text)
        self.assertNotIn("<!--", page.text)
        self.assertNotIn("<c>", page.text)
        config = self.page_config(page)
        self.assertEqual(config["version"], evil)
        self.assertEqual(config["commitHash"], "<!--")
        self.assertEqual(config["basename"], "/a\"b'<c>")
        # In URLs the basename is percent-encoded.
        self.assertEqual(config["baseUrl"], "/a%22b%27%3Cc%3E")
        self.assertIn('href="/a%22b%27%3Cc%3E/"', page.text)

    def test_script_json_escapes_markup(self) -> None:
        """script_json writes <, >, & and line separators as escapes and stays valid JSON."""
        value = {"a": "</script><!-- & \u2028\u2029"}
        text = script_json(value)
        for raw in ("<", ">", "&", "\u2028", "\u2029"):
            self.assertNotIn(raw, text)
        self.assertEqual(json.loads(text), value)

    def test_placeholders_in_values_are_not_expanded(self) -> None:
        """A value that looks like a placeholder is inserted literally."""
        page = self.fetch(client(version="%%STATIC%%"), "/ui/")
        self.assertEqual(self.page_config(page)["version"], "%%STATIC%%")
        self.assertIn('<span id="hq-version">%%STATIC%%</span>', page.text)
        self.assertNotIn("%%", page.text.replace("%%STATIC%%", ""))

    def test_other_methods_are_not_allowed(self) -> None:
        """POST or DELETE below the basename is a 405 JSON error."""
        treq = client()
        for method in ("POST", "DELETE", "PUT"):
            response = self.fetch(treq, "/ui/", method)
            self.assertEqual(response.code, 405)
            self.assertEqual(response.json()["status"], 405)
            self.assertEqual(response.headers["allow"], "GET, HEAD")

    def test_head_has_no_body(self) -> None:
        """HEAD of the page answers like GET without a body."""
        response = self.fetch(client(), "/ui/", "HEAD")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.body, b"")


class AssetTests(UITestCase):
    """
    The static files below ``<basename>/static/<hash>/``.
    """

    def static_base(self, treq: StubTreq, prefix: str = "/ui") -> str:
        return str(self.page_config(self.fetch(treq, prefix + "/"))["static"])

    def test_assets_have_their_content_types(self) -> None:
        """Scripts are text/javascript, styles text/css, the icon SVG."""
        treq = client("/admin/hq/")
        base = self.static_base(treq, "/admin/hq")
        expected = {
            "app.js": "text/javascript; charset=utf-8",
            "attempts.js": "text/javascript; charset=utf-8",
            "bulk.js": "text/javascript; charset=utf-8",
            "dom.js": "text/javascript; charset=utf-8",
            "theme.js": "text/javascript; charset=utf-8",
            "style.css": "text/css; charset=utf-8",
            "favicon.svg": "image/svg+xml",
        }
        for name, content_type in expected.items():
            response = self.fetch(treq, f"{base}/{name}")
            self.assertEqual(response.code, 200, name)
            self.assertEqual(response.headers["content-type"], content_type, name)
            self.assertEqual(response.body, (UI_DIR / name).read_bytes())
            self.assertEqual(response.headers["cache-control"], IMMUTABLE.decode())
            self.assertEqual(response.headers["x-content-type-options"], "nosniff")

    def test_every_asset_has_a_known_content_type(self) -> None:
        """No shipped file falls back to application/octet-stream."""
        files = UIFiles.load()
        for name, asset in files.assets.items():
            self.assertNotEqual(asset.content_type, b"application/octet-stream", name)

    def test_old_hash_is_served_but_not_cached(self) -> None:
        """An asset asked for under another hash is served with no-cache."""
        response = self.fetch(client(), "/ui/static/0123456789abcdef/app.js")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers["cache-control"], NO_CACHE.decode())

    def test_unknown_assets_are_404(self) -> None:
        """Missing files, the folder itself and path tricks are 404, never the page."""
        treq = client()
        base = self.static_base(treq)
        for path in [
            f"{base}/nope.js",
            "/ui/static",
            "/ui/static/",
            f"{base}/",
            f"{base}/index.html",
            f"{base}/../../../hq/ui.py",
            f"{base}/%2e%2e/%2e%2e/hq/ui.py",
            f"{base}/%ff.js",
        ]:
            response = self.fetch(treq, path)
            self.assertEqual(response.code, 404, path)
            self.assertEqual(response.json()["status"], 404, path)

    def test_asset_hash_changes_with_content(self) -> None:
        """The asset hash is a digest of the files, so an edit gives new URLs."""
        folder = Path(self.mktemp())
        folder.mkdir()
        (folder / "index.html").write_text("<p>%%STATIC%%</p>")
        (folder / "a.js").write_text("1")
        first = UIFiles.load(folder).version
        (folder / "a.js").write_text("2")
        self.assertNotEqual(UIFiles.load(folder).version, first)

    def test_missing_files_are_a_clear_error(self) -> None:
        """A folder without index.html cannot be loaded, and says so."""
        folder = Path(self.mktemp())
        folder.mkdir()
        with self.assertRaises(FileNotFoundError) as e:
            UIFiles.load(folder)
        self.assertIn("index.html", str(e.exception))

    def test_source_files_are_found(self) -> None:
        """ui_source finds the shipped files: the page and the scripts."""
        source = ui_source()
        for name in ("index.html", "app.js", "style.css"):
            self.assertTrue(source.joinpath(name).is_file(), name)

    def test_every_imported_module_is_shipped(self) -> None:
        """Each relative import in the scripts names a file that is served."""
        files = UIFiles.load()
        for name, asset in files.assets.items():
            if not name.endswith(".js"):
                continue
            for target in re.findall(r'from\s+"\./([^"]+)"', asset.body.decode()):
                self.assertIn(target, files.assets, f"{name} imports {target}")

    def test_status_filter_offers_every_status(self) -> None:
        """The UI's status list (filter and colours) is the server's, ``scheduled`` included."""
        text = (UI_DIR / "format.js").read_text()
        match = re.search(r"export const STATUSES = \[(.*?)\];", text, re.S)
        assert match is not None
        self.assertEqual(tuple(re.findall(r'"(\w+)"', match.group(1))), STATUSES)

    def test_scripts_call_the_part_two_endpoints(self) -> None:
        """The attempt history and the bulk actions use the paths of SPEC §11."""
        text = (UI_DIR / "api.js").read_text()
        self.assertIn('jobPath(id) + "/attempts"', text)
        self.assertIn('call("POST", "/jobs/" + kind, { query: filter })', text)
        bulk = (UI_DIR / "bulk.js").read_text()
        self.assertEqual(
            re.findall(r'kind: "(\w+)"', bulk), ["stop", "restart", "delete"], "bulk actions"
        )

    def test_scripts_never_insert_html(self) -> None:
        """No script uses innerHTML, outerHTML, insertAdjacentHTML or document.write."""
        for path in UI_DIR.glob("*.js"):
            text = path.read_text()
            for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write"):
                self.assertNotIn(sink, text, f"{path.name} uses {sink}")


class MountTests(UITestCase):
    """
    The root resource: the UI at its basename, the API everywhere else.
    """

    def test_api_paths_are_not_shadowed(self) -> None:
        """/, /job, /stats and look-alike paths reach the API with their whole path."""
        treq = client("/ui")
        for path in ["/", "/job", "/job/123/stop", "/stats", "/uix", "/u", "/static/x.js"]:
            response = self.fetch(treq, path)
            self.assertEqual(response.code, 200, path)
            self.assertEqual(response.json()["path"], path, path)
            self.assertEqual(response.json()["prepath"], [], path)

    def test_api_keeps_paths_sharing_a_first_segment(self) -> None:
        """With basename /admin/hq, /admin and /admin/other go to the API."""
        treq = client("/admin/hq")
        for path in ["/admin", "/admin/", "/admin/other", "/admin/hqx/y"]:
            response = self.fetch(treq, path)
            self.assertEqual(response.json()["path"], path, path)
        self.assertEqual(self.fetch(treq, "/admin/hq").code, 301)

    def test_klein_api_routes_through_the_mount(self) -> None:
        """A Klein API mounted beside the UI answers its routes, GET / included."""
        treq = client("/ui", api=KleinAPI().app.resource())
        self.assertEqual(self.fetch(treq, "/").json(), {"version": "test"})
        self.assertEqual(self.fetch(treq, "/job/42").json(), {"id": "42"})
        self.assertEqual(self.fetch(treq, "/nope").code, 404)
        self.assertEqual(self.fetch(treq, "/ui/").code, 200)

    def test_without_ui_the_api_is_the_root(self) -> None:
        """mount with no UI returns the API itself: the basename is an API 404."""
        api = EchoAPI()
        self.assertIs(mount(api, None, "/ui"), api)

    def test_root_basename_is_refused(self) -> None:
        """A basename of / would shadow GET /, so it is refused."""
        for basename in ("/", "", "//"):
            with self.assertRaises(ValueError):
                mount(EchoAPI(), None, basename)
            with self.assertRaises(ValueError):
                ui_resource(basename, "1", "x")

    def test_basename_normalised_like_config(self) -> None:
        """normalise_basename gives the same path as Config.ui_path."""
        for basename in ("/ui", "/ui/", "ui", "ui/", "/admin/hq/", "admin/hq"):
            self.assertEqual(
                normalise_basename(basename), Config(ui_basename=basename).ui_path, basename
            )

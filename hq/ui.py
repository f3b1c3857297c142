"""
The built-in web UI: the static files under ``ui_basename`` and the root resource
that puts the UI beside the API.

The files ship as the data package ``hq_ui`` (the repository's ``ui/`` folder);
a plain checkout without an installed ``hq_ui`` uses ``ui/`` next to ``hq/``.
Every file is read once, when the resource is made, so serving never touches
the disk.

URL layout below the basename (e.g. ``/ui``):

- ``/ui`` redirects to ``/ui/``;
- ``/ui/static/<hash>/<file>`` serves one asset; ``<hash>`` is a digest of all
  assets, so a new release never meets a stale cache and assets can be cached
  for a year;
- any other path below ``/ui/`` serves ``index.html`` (the page routes itself).
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import re
from collections.abc import Iterator
from html import escape as html_escape
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

import attrs
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

from hq.config import Config
from hq.site import error_body

#: The folder below the basename where assets are served.
STATIC_SEGMENT = b"static"

#: Content types by file suffix; anything else is served as opaque bytes.
CONTENT_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".mjs": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".json": b"application/json; charset=utf-8",
    ".map": b"application/json; charset=utf-8",
    ".svg": b"image/svg+xml",
    ".png": b"image/png",
    ".ico": b"image/x-icon",
    ".txt": b"text/plain; charset=utf-8",
}
DEFAULT_CONTENT_TYPE = b"application/octet-stream"

#: Assets under the current hash never change, so browsers may keep them.
IMMUTABLE = b"public, max-age=31536000, immutable"
#: The page itself (and assets asked for under an old hash) are checked every time.
NO_CACHE = b"no-cache"

#: The page only loads its own files and talks only to its own origin.
CONTENT_SECURITY_POLICY = (
    b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    b"connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    b"form-action 'self'"
)

_INDEX = "index.html"
_PLACEHOLDER = re.compile(r"%%(\w+)%%")
# Files in the source folder that are not part of the UI.
_SKIPPED_SUFFIXES = (".py", ".pyc")


def normalise_basename(basename: str) -> str:
    """
    Return ``basename`` as ``Config.ui_path`` does: one leading slash, none trailing.

    :raises ValueError: if ``basename`` names the root, which would shadow the API.
    """
    path = Config(ui_basename=basename, dispatchers=1).ui_path
    if path == "/":
        raise ValueError("the UI basename must name a path below /, such as '/ui'")
    return path


def script_json(value: Any) -> str:
    """
    Return ``value`` as JSON text that is safe inside an HTML ``<script>`` element.

    ``<``, ``>`` and ``&`` are written as ``\\u`` escapes, so no value can close
    the element or open a comment; so are U+2028 and U+2029.
    """
    text = json.dumps(value, sort_keys=True, ensure_ascii=False)
    for char, escaped in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(char, escaped)
    return text


def ui_source() -> Any:
    """
    Return the folder (a ``Traversable``) holding the UI files.

    The installed data package ``hq_ui`` if there is one, else ``ui/`` beside
    the ``hq`` package (a plain checkout).
    """
    try:
        files = importlib.resources.files("hq_ui")
    except (ModuleNotFoundError, NotADirectoryError):
        # NotADirectoryError: a setuptools editable install maps hq_ui with a
        # path hook that importlib.resources cannot read.
        pass
    else:
        if files.joinpath(_INDEX).is_file():
            return files
    return Path(__file__).resolve().parent.parent / "ui"


def _walk(folder: Any, prefix: str = "") -> Iterator[tuple[str, bytes]]:
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        name = entry.name
        if name.startswith((".", "_")) or name.endswith(_SKIPPED_SUFFIXES):
            continue
        if entry.is_dir():
            yield from _walk(entry, prefix + name + "/")
        elif entry.is_file():
            yield prefix + name, entry.read_bytes()


def content_type(name: str) -> bytes:
    """
    Return the ``Content-Type`` value for the file ``name``.
    """
    suffix = name[name.rfind(".") :] if "." in name else ""
    return CONTENT_TYPES.get(suffix.lower(), DEFAULT_CONTENT_TYPE)


@attrs.frozen
class Asset:
    """
    One static file, ready to serve.
    """

    body: bytes
    content_type: bytes


@attrs.frozen
class UIFiles:
    """
    The UI's files read into memory: the page template and the assets.

    ``version`` is a digest of every file, used in asset URLs.
    """

    template: str
    assets: dict[str, Asset]
    version: str

    @classmethod
    def load(cls, source: Any = None) -> UIFiles:
        """
        Read every file of ``source`` (a folder or ``Traversable``; default :func:`ui_source`).

        :raises FileNotFoundError: if the folder has no ``index.html``.
        """
        folder = ui_source() if source is None else source
        files = dict(_walk(folder))
        if _INDEX not in files:
            raise FileNotFoundError(f"the web UI files are missing: no {_INDEX} in {folder}")
        template = files.pop(_INDEX).decode("utf-8")
        digest = hashlib.sha256()
        for name, body in sorted(files.items()):
            digest.update(name.encode("utf-8") + b"\0" + body + b"\0")
        digest.update(template.encode("utf-8"))
        assets = {name: Asset(body, content_type(name)) for name, body in files.items()}
        return cls(template=template, assets=assets, version=digest.hexdigest()[:16])


def render_index(template: str, values: dict[str, str]) -> bytes:
    """
    Return ``template`` with each ``%%NAME%%`` replaced by ``values["NAME"]``, once.

    The values are inserted as given (callers escape them for where they go);
    a value that itself looks like a placeholder is not expanded again.
    """
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template).encode("utf-8")


def _error(request: IRequest, code: int, message: str) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json; charset=UTF-8")
    request.setHeader(b"cache-control", NO_CACHE)
    return error_body(code, message)


class UIResource(Resource):
    """
    Serves the UI below its basename; a leaf that reads ``request.postpath``.
    """

    isLeaf = True

    def __init__(self, basename: str, files: UIFiles, version: str, commit_hash: str) -> None:
        super().__init__()
        self._basename = normalise_basename(basename)
        self._files = files
        url_base = quote(self._basename, safe="/")
        static_base = f"{url_base}/{STATIC_SEGMENT.decode()}/{files.version}"
        config = {
            "basename": self._basename,
            "baseUrl": url_base,
            "static": static_base,
            "version": version,
            "commitHash": commit_hash,
        }
        self._index = render_index(
            files.template,
            {
                "BASE": html_escape(url_base, quote=True),
                "STATIC": html_escape(static_base, quote=True),
                "CONFIG_JSON": script_json(config),
                "VERSION": html_escape(version, quote=True),
            },
        )
        self._redirect_to = (url_base + "/").encode("ascii")
        self._version = files.version.encode("ascii")

    def render_GET(self, request: IRequest) -> bytes:
        """
        Serve an asset, the page, or the redirect to the basename with a slash.
        """
        req = cast(Request, request)
        postpath: list[bytes] = list(req.postpath or [])
        request.setHeader(b"x-content-type-options", b"nosniff")
        if not postpath:
            query = request.uri.partition(b"?")[2]
            location = self._redirect_to + (b"?" + query if query else b"")
            request.setResponseCode(301)
            request.setHeader(b"location", location)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"Moved to " + location + b"\n"
        if postpath[0] == STATIC_SEGMENT:
            return self._asset(request, postpath[1:])
        request.setHeader(b"content-type", CONTENT_TYPES[".html"])
        request.setHeader(b"cache-control", NO_CACHE)
        request.setHeader(b"content-security-policy", CONTENT_SECURITY_POLICY)
        request.setHeader(b"referrer-policy", b"same-origin")
        return self._index

    def _asset(self, request: IRequest, segments: list[bytes]) -> bytes:
        if len(segments) < 2:
            return _error(request, 404, "No such file in the web UI")
        version, *parts = segments
        try:
            name = b"/".join(parts).decode("utf-8")
        except UnicodeDecodeError:
            return _error(request, 404, "No such file in the web UI")
        asset = self._files.assets.get(name)
        if asset is None:
            return _error(request, 404, "No such file in the web UI")
        request.setHeader(b"content-type", asset.content_type)
        # An old hash (a page loaded before an upgrade) still gets today's file,
        # but must not be cached under the old URL.
        request.setHeader(b"cache-control", IMMUTABLE if version == self._version else NO_CACHE)
        return asset.body

    def render(self, request: IRequest) -> bytes:
        """
        Answer GET and HEAD; any other method is 405.
        """
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"allow", b"GET, HEAD")
            return _error(request, 405, "Method Not Allowed")
        result: bytes = super().render(request)
        return result


def ui_resource(
    basename: str, version: str, commit_hash: str, files: UIFiles | None = None
) -> IResource:
    """
    Return the resource serving the web UI mounted at ``basename``.

    ``version`` and ``commit_hash`` are shown in the page. ``files`` defaults to
    the installed UI files (:meth:`UIFiles.load`).

    :raises FileNotFoundError: if the UI files cannot be found.
    :raises ValueError: if ``basename`` names the root.
    """
    return UIResource(basename, files or UIFiles.load(), version, commit_hash)


class MountResource(Resource):
    """
    The root: paths below the UI basename go to the UI, everything else to the API.
    """

    def __init__(self, api: IResource, ui: IResource, basename: str) -> None:
        super().__init__()
        self._api = api
        self._ui = ui
        self._segments = [
            s.encode("utf-8") for s in normalise_basename(basename).strip("/").split("/")
        ]

    def getChildWithDefault(self, path: bytes, request: IRequest) -> IResource:
        """
        Return the UI when the path starts with the basename, else the API.

        The API sees the request exactly as if it were the root resource.
        """
        req = cast(Request, request)
        postpath: list[bytes] = req.postpath if req.postpath is not None else []
        prepath: list[bytes] = req.prepath if req.prepath is not None else []
        wanted = len(self._segments)
        if [path, *postpath[: wanted - 1]] == self._segments:
            prepath.extend(postpath[: wanted - 1])
            del postpath[: wanted - 1]
            return self._ui
        # Give the segment back: the API routes on the whole path.
        prepath.pop()
        postpath.insert(0, path)
        return self._api

    def render(self, request: IRequest) -> Any:
        """
        A request with no path segments at all belongs to the API.
        """
        return self._api.render(request)


def mount(api: IResource, ui: IResource | None, basename: str) -> IResource:
    """
    Return the root resource: ``ui`` at ``basename`` (e.g. ``/ui``, ``/ui/`` or
    ``/admin/hq``) and ``api`` everywhere else, ``GET /`` included.

    With no ``ui`` the API alone is the root.

    :raises ValueError: if ``basename`` names the root.
    """
    normalise_basename(basename)
    if ui is None:
        return api
    return MountResource(api, ui, basename)

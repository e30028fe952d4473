"""Local paths and fsspec URLs (s3://, hf://, memory://, ...) behind one small API.

Local paths stay on the fast path (plain `open`, `os.replace`, mmap); anything
with a scheme goes through fsspec, imported only when needed.

Every failure of the storage layer itself (a bucket that does not exist, wrong
or missing credentials, an endpoint that refuses connections, a scheme with no
installed filesystem) becomes one `LakeError` naming the URL and what to do,
here and nowhere else: `errors(url)` does the mapping, every function below runs
its fsspec calls inside it, and readers that stream a file themselves wrap their
loop in it. A missing file stays a `FileNotFoundError` (callers know what the
file is for and say so).

Credentials and endpoints come from the ecosystem's own configuration (for S3:
`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_PROFILE`, ~/.aws/config, which
botocore reads; for the Hub: `hf auth login`, `HF_ENDPOINT`); anything else goes
to the filesystem as fsspec storage options (`set_storage_options`, or fsspec's
own `FSSPEC_S3='{"key": ...}'` environment variables).

No request waits forever: every filesystem is made here (`filesystem`), with
`REQUEST_LIMITS` under whatever options the user gave (theirs win, key by key).
An S3 store that stops answering (a frozen endpoint accepts the connection and
never replies) costs each request at most the read timeout per try, over a few
tries, then one line naming the URL; without these limits s3fs's own retries
around botocore's made that seven minutes per request.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import os
import re
import sys
from typing import IO

from lake.errors import LakeError, about

_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_url(path: str) -> bool:
    """True for `scheme://...` other than `file://`."""
    return bool(_SCHEME.match(str(path))) and not str(path).startswith("file://")


def scheme(path: str) -> str:
    """'s3' for s3://..., '' for a local path."""
    return str(path).split("://", 1)[0] if is_url(path) else ""


def local_path(path: str) -> str:
    """Strip a `file://` prefix; leave everything else alone."""
    path = str(path)
    return path[len("file://"):] if path.startswith("file://") else path


def join(base: str, *parts: str) -> str:
    base = str(base)
    if is_url(base):
        return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])
    return os.path.join(local_path(base), *parts)


# -- errors: the one place where storage failures become user-facing messages ---------------------------------

_CONNECTION = {"EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ProxyConnectionError",
               "ClientConnectorError", "ServerDisconnectedError", "ClientOSError", "FSTimeoutError",
               "ConnectionClosedError", "ConnectionError", "Timeout", "TimeoutError"}
_CREDENTIALS = {"NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError", "ProfileNotFound",
                "LocalTokenNotFoundError"}
_SERVICE_ERRORS = {"BotoCoreError", "ClientError", "ClientResponseError", "HfHubHTTPError"}


def _names(exc: BaseException) -> set[str]:
    return {c.__name__ for c in type(exc).__mro__}


def _short(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _endpoint(url: str) -> str:
    proto = scheme(url)
    if proto in ("s3", "s3a"):
        opts = _options().get("s3", {})
        return (opts.get("endpoint_url") or opts.get("client_kwargs", {}).get("endpoint_url")
                or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS S3")
    if proto == "hf":
        from huggingface_hub import constants

        return constants.ENDPOINT
    return f"the {proto}:// service"


def _reason(exc: BaseException) -> str:
    """A few words on why a connection failed, from the exception and the ones it wraps."""
    if "OfflineModeIsEnabled" in _names(exc):
        return "offline mode is on: HF_HUB_OFFLINE=1"
    chain, e = [], exc
    while e is not None and len(chain) < 8:
        chain.append(e)
        kwargs = getattr(e, "kwargs", None)  # botocore keeps the cause there
        e = (kwargs.get("error") if isinstance(kwargs, dict) else None) or e.__cause__ or e.__context__
    text = " ".join(str(x) for x in chain).lower()
    if "refused" in text or any(isinstance(x, ConnectionRefusedError) for x in chain):
        return "connection refused"
    if "timed out" in text or "timeout" in text:
        return "timed out"
    return _short(exc)


def _translate(url: str, exc: BaseException) -> LakeError | None:
    """The LakeError for a storage failure, or None for a missing file (and for what is not storage's)."""
    names, proto = _names(exc), scheme(url) or "file"
    if isinstance(exc, ImportError):
        return LakeError(f"{url}: no filesystem for {proto}:// is installed ({_short(exc)}); install it "
                         "(s3fs for s3://, huggingface_hub for hf://) or use a local path")
    if isinstance(exc, ValueError) and "protocol not known" in str(exc).lower():
        return LakeError(f"{url}: unknown URL scheme {proto}://; give a local path, s3://, hf:// or the URL of "
                         "another installed fsspec filesystem")
    if isinstance(exc, FileNotFoundError):
        if "bucket does not exist" in str(exc).lower():
            bucket = local_path(url).split("://", 1)[-1].split("/", 1)[0]
            return LakeError(f"{url}: the bucket {bucket!r} does not exist at {_endpoint(url)}; create it "
                             f"(`aws s3 mb s3://{bucket}`) or fix the URL")
        return None
    if isinstance(exc, TypeError) and "unexpected keyword argument" in str(exc):
        return LakeError(f"{url}: a storage option is not accepted by the {proto}:// filesystem ({_short(exc)}); "
                         "check --storage-options")
    if names & _CREDENTIALS:
        how = ("log in with `hf auth login` or set HF_TOKEN" if proto == "hf" else "set AWS_ACCESS_KEY_ID and "
               "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or pass them with --storage-options")
        return LakeError(f"{url}: no usable credentials ({_short(exc)}); {how}")
    if isinstance(exc, PermissionError) or "GatedRepoError" in names:
        login = "`hf auth login`" if proto == "hf" else "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
        return LakeError(f"{url}: access denied ({_short(exc)}); check the credentials ({login}) and "
                         "the permissions on the bucket or repository")
    if names & _CONNECTION or isinstance(exc, (ConnectionError, TimeoutError)):
        where = "HF_ENDPOINT, HF_HUB_OFFLINE" if proto == "hf" else "AWS_ENDPOINT_URL"
        reason = _reason(exc)
        if reason == "timed out" and proto in REQUEST_LIMITS:
            limits = request_options(url)["config_kwargs"]
            tries = limits.get("retries", {}).get("total_max_attempts")
            reason = (f"no answer within {limits.get('read_timeout')} s" + (f", {tries * S3FS_TRIES} tries" if tries
                                                                            else "") +
                      "; a slow store needs a longer config_kwargs read_timeout in --storage-options")
        return LakeError(f"{url}: cannot reach {_endpoint(url)} ({reason}); check the network and the "
                         f"endpoint ({where}), then re-run: finished work is kept")
    if is_url(url) and (names & _SERVICE_ERRORS or isinstance(exc, OSError)):
        return LakeError(f"{url}: the object store failed the request ({_short(exc)}); re-run to retry")
    return None


@contextlib.contextmanager
def errors(url: str):
    """Run fsspec calls on `url`; a storage failure leaves as one LakeError (a missing file as FileNotFoundError)."""
    try:
        yield
    except LakeError:
        raise
    except Exception as e:
        mapped = _translate(str(url), e)
        if mapped is None:
            raise
        raise mapped from None


# -- filesystems and their options ---------------------------------------------------------------------------

S3_LIMITS = {"connect_timeout": 5, "read_timeout": 10, "retries": {"total_max_attempts": 3, "mode": "standard"}}
"""botocore's limits for every S3 request (its `Config`, s3fs's `config_kwargs`): seconds to connect, seconds
without an answer, and tries in all, with botocore's exponential backoff (jittered, 1 s then 2 s...)."""
REQUEST_LIMITS = {"s3": {"config_kwargs": S3_LIMITS}, "s3a": {"config_kwargs": S3_LIMITS}}
S3FS_TRIES = 2
"""s3fs's own loop around botocore's tries (5 in s3fs): one more go, which is what retries a body read that
breaks mid-transfer (botocore's tries end when the headers arrive). Not a storage option: s3fs takes none."""

LIMITS_HELP = ("An s3:// request gives up after {connect_timeout} s without a connection or {read_timeout} s without "
               "an answer, tried {total_max_attempts} times with backoff, twice over (s3fs repeats botocore's tries "
               "once); change that with e.g. "
               "'{{\"config_kwargs\": {{\"read_timeout\": 60, \"retries\": {{\"total_max_attempts\": 5}}}}}}'"
               ).format(**S3_LIMITS, **S3_LIMITS["retries"])
"""A sentence for the --help of every command's --storage-options."""


def _options() -> dict:
    import fsspec.config

    return fsspec.config.conf


def _merge(base: dict, over: dict) -> dict:
    """`base` with `over` laid on top, key by key into nested dicts (a user's read_timeout keeps our retries)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _aws_sets(variable: str, env: str) -> bool:
    """Whether the AWS configuration (the environment variable, or the profile in ~/.aws/config) sets this
    botocore variable: then it, not REQUEST_LIMITS, decides."""
    return bool(os.environ.get(env)) or variable in _aws_profile(os.environ.get("AWS_PROFILE"),
                                                                  os.environ.get("AWS_CONFIG_FILE"))


@functools.lru_cache(maxsize=8)
def _aws_profile(profile: str | None, config_file: str | None) -> frozenset:
    """The variables the AWS config file sets for this profile (read once per profile and file)."""
    try:
        import botocore.session

        return frozenset(botocore.session.Session().get_scoped_config())
    except Exception:  # noqa: BLE001 - no botocore, or a profile that does not exist: botocore says so on use
        return frozenset()


def request_options(url: str) -> dict:
    """The storage options a filesystem for `url` is made with: REQUEST_LIMITS, then the AWS configuration's
    retry settings, then the user's (`--storage-options`, FSSPEC_* variables) on top."""
    proto = scheme(url)
    limits = copy.deepcopy(REQUEST_LIMITS.get(proto, {}))
    retries = limits.get("config_kwargs", {}).get("retries", {})
    for key, variable, env in (("total_max_attempts", "max_attempts", "AWS_MAX_ATTEMPTS"),
                               ("mode", "retry_mode", "AWS_RETRY_MODE")):
        if key in retries and _aws_sets(variable, env):
            del retries[key]
    return _merge(limits, _options().get(proto, {}))


def set_storage_options(urls, options: str | dict | None) -> None:
    """Pass fsspec storage options (`--storage-options JSON`) to the filesystems of these URLs.

    Written into fsspec's own configuration, which every later filesystem of that
    protocol reads in this process (a worker process gets them through `options_snapshot` /
    `restore_options`); nested dicts are merged key by key, so `{"config_kwargs": {"read_timeout": 60}}`
    keeps the other limits.
    """
    if not options:
        return
    if isinstance(options, str):
        try:
            options = json.loads(options)
        except json.JSONDecodeError as e:
            raise LakeError(f"--storage-options: not valid JSON ({e})") from None
    if not isinstance(options, dict):
        raise LakeError("--storage-options: expected a JSON object, e.g. '{\"anon\": true}'")
    for url in urls:
        if is_url(url):
            conf = _options()
            conf[scheme(url)] = _merge(conf.get(scheme(url), {}), options)


def options_snapshot() -> dict:
    """The fsspec options of this process ({protocol: options}), to hand to a spawned worker process,
    which starts with only what the environment and fsspec's config files say."""
    config = sys.modules.get("fsspec.config")  # not imported: no URL was opened, nothing was set
    return copy.deepcopy(config.conf) if config is not None else {}


def restore_options(snapshot: dict) -> None:
    """In a worker: apply the parent's `options_snapshot()`."""
    conf = _options()
    for protocol, options in snapshot.items():
        conf[protocol] = _merge(conf.get(protocol, {}), options)


def _fs(url: str):
    import fsspec

    with errors(url):
        fs, path = fsspec.core.url_to_fs(url, **request_options(url))
    if scheme(url) in REQUEST_LIMITS and hasattr(fs, "retries"):
        fs.retries = S3FS_TRIES
    _quiet_orphaned_failures(getattr(fs, "loop", None))
    return fs, path


def _quiet_orphaned_failures(loop) -> None:
    """Async filesystems (s3fs, ...) run their requests on fsspec's event-loop thread. When the server
    goes away, requests still in flight fail in tasks that nobody awaits any more, and asyncio prints
    each one with a traceback ("Task exception was never retrieved") after the call that needed them
    has already failed with its own one-line message. Connection failures of such tasks are dropped;
    anything else still goes to asyncio's default handler."""
    if loop is None or getattr(loop, "_emolake_quiet", False):
        return

    def handler(loop, context):
        exc = context.get("exception")
        if exc is not None and (isinstance(exc, OSError) or _names(exc) & _CONNECTION):
            return
        loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
    loop._emolake_quiet = True


def filesystem(url: str):
    """(fsspec filesystem, path in it) of a URL, for the few calls this module does not wrap (run them
    inside `errors(url)`)."""
    return _fs(url)


class _GuardedFile:
    """A remote file whose reads and writes report storage failures through `errors` (they happen lazily)."""

    def __init__(self, f, url: str):
        self._f, self._url = f, url

    def read(self, *a):
        with errors(self._url):
            return self._f.read(*a)

    def write(self, data):
        with errors(self._url):
            return self._f.write(data)

    def close(self):
        with errors(self._url):
            return self._f.close()

    def discard(self):
        """Drop an unfinished upload instead of committing it (fsspec buffered files upload on close)."""
        with errors(self._url):
            getattr(self._f, "discard", lambda: None)()  # s3fs: aborts the multipart upload
        with contextlib.suppress(AttributeError):
            self._f.closed = True  # so that garbage collection does not close it, i.e. upload it after all

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_file(path: str, mode: str = "rb", **kwargs) -> IO:
    if is_url(path):
        fs, p = _fs(path)
        with errors(path):
            return _GuardedFile(fs.open(p, mode, **kwargs), path)
    return open(local_path(path), mode)


def exists(path: str) -> bool:
    if is_url(path):
        try:
            info(path)  # not fs.exists: some filesystems answer False for "cannot reach the server"
            return True
        except FileNotFoundError:  # `errors` turned every storage failure into a LakeError
            return False
    return os.path.exists(local_path(path))


def info(path: str) -> dict:
    """The filesystem's description of a file: at least its size (for hf://, also `lfs.sha256` of LFS files)."""
    if is_url(path):
        fs, p = _fs(path)
        with errors(path):
            fs.invalidate_cache(p)  # another process may have written it since we last listed
            return dict(fs.info(p))
    return {"name": path, "size": os.path.getsize(local_path(path))}


def size(path: str) -> int:
    return int(info(path)["size"])


_CHANGE_TOKENS = ("ETag", "etag", "generation", "blob_id", "mtime", "LastModified", "last_modified", "created")
"""Fields of an fsspec file description that change when the file is written again (the first one there counts)."""


def _version(size: int, described: dict) -> tuple:
    token = next((described[k] for k in _CHANGE_TOKENS if described.get(k) is not None), "")
    return int(size), str(token)


def version(path: str) -> tuple:
    """What changes when a file is written again: (size, inode, mtime ns) of a local file; behind a URL its size
    and the store's change token (S3's ETag, a modification time, ...). Compare two of the same path only."""
    if is_url(path):
        described = info(path)
        return _version(described["size"], described)
    st = os.stat(local_path(path))
    return st.st_size, st.st_ino, st.st_mtime_ns


def versions(folder: str) -> dict[str, tuple]:
    """`version` of every file in a folder, by base name, from one listing (one request behind a URL)."""
    if not is_url(folder):
        with os.scandir(local_path(folder)) as entries:
            return {e.name: (st.st_size, st.st_ino, st.st_mtime_ns) for e in entries if e.is_file()
                    for st in [e.stat()]}
    fs, p = _fs(folder)
    with errors(folder):
        fs.invalidate_cache(p)
        return {os.path.basename(d["name"].rstrip("/")): _version(d["size"], d)
                for d in fs.ls(p, detail=True) if d.get("type") != "directory"}


def read_bytes(path: str) -> bytes:
    if is_url(path):
        fs, p = _fs(path)
        with errors(path):
            return fs.cat_file(p)
    with open(local_path(path), "rb") as f:
        return f.read()


def read_range(path: str, start: int, end: int) -> bytes:
    """Bytes [start, end) of a file: one ranged GET on an object store."""
    if is_url(path):
        fs, p = _fs(path)
        with errors(path):
            return fs.cat_file(p, start=start, end=end)
    with open(local_path(path), "rb") as f:
        f.seek(start)
        return f.read(end - start)


def listdir(path: str) -> list[str]:
    """Base names of the entries of a directory (sorted)."""
    if is_url(path):
        fs, p = _fs(path)
        with errors(path):
            fs.invalidate_cache(p)
            return sorted(os.path.basename(x.rstrip("/")) for x in fs.ls(p, detail=False))
    return sorted(os.listdir(local_path(path)))


def remove(path: str) -> None:
    """Delete one file; a file already gone is fine."""
    try:
        if is_url(path):
            fs, p = _fs(path)
            with errors(path):
                fs.rm_file(p)
                fs.invalidate_cache(p)
        else:
            os.remove(local_path(path))
    except FileNotFoundError:
        pass


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Write a whole file so that a reader sees the old content or the new, never a part.

    Local: temp file in the same directory, fsync, os.replace. Object stores: a
    single PUT is already atomic.
    """
    if is_url(path):
        fs, p = _fs(path)
        with errors(path):
            fs.pipe_file(p, data)
        return
    path = local_path(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with about(path), open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # a full disk: the old file stays, and so must the first error
            os.remove(tmp)
        raise

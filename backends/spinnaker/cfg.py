"""Which SpiNNaker machine a run uses, the sPyNNaker cfg fsnn writes for it, and reachability.

Machine selection, first match wins: the backend's options (``host=``, ``spalloc=``,
``virtual=``, ``version=``), then the environment (``FSNN_SPINNAKER_HOST``,
``FSNN_SPINNAKER_SPALLOC``, ``FSNN_SPINNAKER_VERSION``, ``FSNN_SPINNAKER_VIRTUAL=1``), then the
default: a virtual SpiNN-5 board (``version = 5``: 48 chips), on which sPyNNaker maps a network
but simulates nothing.

The cfg file. sPyNNaker reads its defaults, then *one* user cfg (``~/.spynnaker.cfg``,
``$XDG_CONFIG_HOME/.spynnaker.cfg`` or ``/etc/xdg/.spynnaker.cfg``; two of them is an error),
then ``./spynnaker.cfg`` in the current directory, which overrides the others
(``spinn_utilities/config_holder.py: load_config``, ``conf_loader.py: load_config``). fsnn
writes its settings to ``spynnaker.cfg`` in a fresh temporary working directory per session and
runs every sPyNNaker call with that directory as the current one, so the run's ``reports/``
land there too. A user's cfg is never written: where none exists, sPyNNaker would *create*
``~/.spynnaker.cfg`` from its template and stop (``_install_cfg_and_error``), so fsnn then points
``XDG_CONFIG_HOME`` (for the duration of each call only) at the session directory, which holds
an empty ``.spynnaker.cfg``. Where a user cfg exists it is read as usual (spalloc credentials,
for instance) and fsnn's local file overrides only the keys below.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import socket
import tempfile
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from fsnn.backends.base import BackendError

CFG_NAME = "spynnaker.cfg"
SCP_PORT = 17893  # SpiNNaker's SCP-over-UDP port (spinnman.constants.SCP_SCAMP_PORT)
SPALLOC_OLD_PORT = 22244  # the default [Machine] spalloc_port of the pre-2022 spalloc protocol
BOARD_CHIPS = {3: 4, 5: 48}  # SpiNN-3: one 2x2 board; SpiNN-5: one 48-chip board


@dataclass(frozen=True)
class Machine:
    """The SpiNNaker machine of a run."""

    kind: str  # "virtual" | "host" | "spalloc"
    version: int = 5
    host: str | None = None  # board host name or IP ("host")
    spalloc: str | None = None  # spalloc server: http(s) URL, or host[:port] (old protocol)
    width: int | None = None  # virtual only: chips across (multi-board virtual machines)
    height: int | None = None
    energy_report: bool | None = None  # None: on for a real machine, off for a virtual one

    @property
    def virtual(self) -> bool:
        return self.kind == "virtual"

    @property
    def energy(self) -> bool:
        return (not self.virtual) if self.energy_report is None else self.energy_report

    @property
    def target(self) -> str:
        if self.kind == "host":
            return f"SpiNNaker board {self.host}"
        if self.kind == "spalloc":
            return f"spalloc server {self.spalloc}"
        size = f"{self.width}x{self.height} chips" if self.width else \
            f"{BOARD_CHIPS.get(self.version, '?')} chips"
        return f"virtual SpiNN-{self.version} machine ({size})"


def _env_flag(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def select_machine(*, host: str | None = None, spalloc: str | None = None,
                   virtual: bool | None = None, version: int | None = None,
                   width: int | None = None, height: int | None = None,
                   energy_report: bool | None = None) -> Machine:
    """The machine from options, else the environment, else a virtual SpiNN-5 board."""
    env = os.environ
    if version is None and env.get("FSNN_SPINNAKER_VERSION"):
        try:
            version = int(env["FSNN_SPINNAKER_VERSION"])
        except ValueError:
            raise BackendError(f"FSNN_SPINNAKER_VERSION must be 3 or 5, got "
                               f"{env['FSNN_SPINNAKER_VERSION']!r}") from None
    version = 5 if version is None else version
    if version not in BOARD_CHIPS:
        raise BackendError(f"SpiNNaker version {version} is not supported; use 3 (SpiNN-3, "
                           f"4 chips) or 5 (SpiNN-5, 48 chips)")
    if virtual is None and (host or spalloc):
        virtual = False
    if virtual is None and _env_flag(env.get("FSNN_SPINNAKER_VIRTUAL")):
        virtual = True
    if not virtual:
        host = host or (None if spalloc else env.get("FSNN_SPINNAKER_HOST"))
        spalloc = spalloc or (None if host else env.get("FSNN_SPINNAKER_SPALLOC"))
    if host and spalloc:
        raise BackendError("give either a board host or a spalloc server, not both")
    if virtual or not (host or spalloc):
        if virtual is False:
            raise BackendError("virtual=False needs a board: pass host= or spalloc=, or set "
                               "FSNN_SPINNAKER_HOST / FSNN_SPINNAKER_SPALLOC")
        return Machine("virtual", version, width=width, height=height,
                       energy_report=energy_report)
    if host:
        return Machine("host", version, host=host, energy_report=energy_report)
    return Machine("spalloc", version, spalloc=spalloc, energy_report=energy_report)


def cfg_text(m: Machine) -> str:
    """The local ``spynnaker.cfg`` for machine ``m`` (only keys sPyNNaker's defaults define)."""
    lines = ["# written by fsnn for one run; overrides the user's cfg for these keys", "",
             "[Logging]", "instantiate = False", "", "[Machine]",
             f"virtual_board = {m.virtual}", f"version = {m.version}",
             f"machine_name = {m.host if m.kind == 'host' else 'None'}",
             f"spalloc_server = {m.spalloc if m.kind == 'spalloc' else 'None'}"]
    if m.virtual and m.width and m.height:
        lines += [f"width = {m.width}", f"height = {m.height}"]
    lines += ["", "[Reports]", f"write_energy_report = {m.energy}", ""]
    return "\n".join(lines)


def user_cfg_exists() -> bool:
    """Whether sPyNNaker would find a user cfg (the places ``config_holder._user_cfg`` looks)."""
    import appdirs

    dot = "." + CFG_NAME
    places = [os.path.join(appdirs.site_config_dir(), dot),
              os.path.join(appdirs.user_config_dir(), dot),
              os.path.join(os.path.expanduser("~"), dot)]
    return any(os.path.isfile(p) for p in places)


class Session:
    """A temporary working directory holding the run's cfg and sPyNNaker's reports."""

    def __init__(self, machine: Machine, workdir: str | Path | None = None,
                 keep: bool = False) -> None:
        self.machine = machine
        self.keep = keep or workdir is not None
        self.dir = Path(workdir) if workdir is not None else \
            Path(tempfile.mkdtemp(prefix="fsnn-spinnaker-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        if not self.keep:  # removed at exit even if close() is never called
            self._finalizer = weakref.finalize(self, shutil.rmtree, str(self.dir), True)
        (self.dir / CFG_NAME).write_text(cfg_text(machine))
        self.xdg: Path | None = None
        if not user_cfg_exists():
            self.xdg = self.dir / "xdg-config"
            self.xdg.mkdir(exist_ok=True)
            (self.xdg / ("." + CFG_NAME)).write_text("# empty: fsnn's settings are in the "
                                                     "run directory's spynnaker.cfg\n")
        self.log = self.dir / "spynnaker.log"

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Run sPyNNaker calls here: cwd is the session dir; their console output (progress bars,
        warnings) goes to ``spynnaker.log`` there."""
        old_cwd = os.getcwd()
        old_xdg = os.environ.get("XDG_CONFIG_HOME")
        out = io.StringIO()
        try:
            os.chdir(self.dir)
            if self.xdg is not None:
                os.environ["XDG_CONFIG_HOME"] = str(self.xdg)
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                yield
        finally:
            os.chdir(old_cwd)
            if self.xdg is not None:
                if old_xdg is None:
                    os.environ.pop("XDG_CONFIG_HOME", None)
                else:
                    os.environ["XDG_CONFIG_HOME"] = old_xdg
            with open(self.log, "a", encoding="utf-8") as f:
                f.write(out.getvalue())

    def reports(self, pattern: str) -> list[Path]:
        return sorted((self.dir / "reports").rglob(pattern))

    def close(self) -> None:
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)


def probe(m: Machine, timeout: float = 3.0) -> None:
    """Raise BackendError naming the host unless the board or spalloc server answers in time.

    A board gets one SCP ``GetVersion`` over UDP (spinnman's own request and connection
    classes) and must reply within ``timeout``; a spalloc server must accept a TCP connection.
    sPyNNaker's own connection logic retries for minutes before failing.
    """
    if m.virtual:
        return
    if m.kind == "host":
        assert m.host is not None
        _probe_board(m.host, timeout)
    else:
        assert m.spalloc is not None
        host, port = _spalloc_address(m.spalloc)
        try:
            with socket.create_connection((host, port), timeout=timeout):
                pass
        except OSError as exc:
            raise BackendError(f"spalloc server {m.spalloc} ({host}:{port}) is unreachable: "
                               f"{exc.strerror or exc}") from None


def _spalloc_address(spalloc: str) -> tuple[str, int]:
    if "://" in spalloc:
        u = urlparse(spalloc)
        if not u.hostname:
            raise BackendError(f"spalloc server URL {spalloc!r} has no host")
        return u.hostname, u.port or (443 if u.scheme == "https" else 80)
    host, _, port = spalloc.partition(":")
    return host, int(port) if port else SPALLOC_OLD_PORT


def _probe_board(host: str, timeout: float) -> None:
    try:
        socket.getaddrinfo(host, SCP_PORT, type=socket.SOCK_DGRAM)
    except OSError as exc:
        raise BackendError(f"SpiNNaker board {host}: cannot resolve the host name "
                           f"({exc.strerror or exc})") from None
    from spinnman.connections.udp_packet_connections import SCAMPConnection
    from spinnman.messages.scp.impl import GetVersion

    conn = None
    try:
        conn = SCAMPConnection(chip_x=0, chip_y=0, remote_host=host)
        conn.send(conn.get_scp_data(GetVersion(0, 0, 0)))
        conn.receive_scp_response(timeout)
    except Exception as exc:  # spinnman raises its own IO/timeout exceptions
        raise BackendError(f"SpiNNaker board {host} did not answer an SCP version request "
                           f"on UDP port {SCP_PORT} within {timeout:g} s "
                           f"({type(exc).__name__}); is it powered, booted and reachable?") \
            from None
    finally:
        if conn is not None:
            conn.close()

"""The model of ``gpuhub.yaml``, the one file that configures the hub and its services (pure).

The hub (``jupyterhub_config.py``), the services and ``gpuhub config check`` read it with
:func:`load_config`: the file named by ``GPUHUB_CONFIG`` (none: the embedded default), then the
``GPUHUB_*`` environment variables of earlier releases laid over it, each with a one-line notice
naming its key (:mod:`gpuhub_spawner.core.hubconfig` reads them). Every error is one line naming
the key path, the bad value and the fix (:class:`ConfigFileError`); unknown keys are errors.
Secrets are never in the file: it names files (``*_file``) or they stay in the environment.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from gpuhub_spawner.core import sizes
from gpuhub_spawner.core.deployconfig import Deploy, Storage, deploy_problems
from gpuhub_spawner.core.hubconfig import UPSTREAM, env_overlay, plain_username
from gpuhub_spawner.core.inventory import InventoryError, units_from_gpus
from gpuhub_spawner.core.isolation import DEFAULT_CPU_LIMIT, DEFAULT_MEM_LIMIT, DEFAULT_PIDS_LIMIT
from gpuhub_spawner.core.quotas import BOUNDS, FIELDS, QuotaError, parse_quota
from gpuhub_spawner.core.volumes import check_source

DEFAULT_IMAGE = "gpuhub/singleuser:latest"


def _port(value: Any) -> Any:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535):
        raise ValueError(f"{value!r} is not a port: write a port number from 1 to 65535")
    return value


#: a TCP port, 1-65535 (a whole number: "8081" in quotes is refused like 0 or 70000)
Port = Annotated[int, BeforeValidator(_port)]


class _KeyProblems(ValueError):
    """Errors found across sections, each with its own key path."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{k}: {m}" for k, m in problems))
        self.problems = problems


class Section(BaseModel):
    """Unknown keys are errors (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


class Hub(Section):
    """The hub process, its proxy and databases, and where user servers run."""

    bind_url: str = "http://127.0.0.1:8000"
    ip: str = ""  # empty: the user network's gateway (on a swarm: Docker's bridge gateway)
    port: Port = 8081
    proxy_api_port: Port = 8001
    data_dir: str = ""  # empty: ./data beside jupyterhub_config.py
    db_url: str = ""  # empty: sqlite in data_dir
    usage_db_url: str = ""  # empty: sqlite in data_dir
    spawner: Literal["docker", "swarm"] = "docker"
    docker_host: str = ""  # swarm only: tcp://manager:2376 with mutual TLS
    user_network: str = "gpuhub-users"
    user_firewall: bool = True
    named_servers: bool = False
    extra_config: str = ""



class GitHub(Section):
    """GitHub sign-in (``sign_in.authenticator: github``); the secret is a file or the environment."""

    client_id: str = ""
    client_secret_file: str = ""  # else GITHUB_CLIENT_SECRET in the environment
    callback_url: str = ""  # empty: <bind_url>/hub/oauth_callback
    orgs: list[str] = []
    allowed_users: list[str] = []
    admin_teams: list[str] = []  # org:team-slug=id
    url: str = ""  # GitHub Enterprise Server's https address; empty: github.com
    ca_certificates: str = ""  # PEM of the CA signing url's certificate; empty: the system's CAs

    @field_validator("url", "ca_certificates")
    @classmethod
    def _tls(cls, value: str, info: Any) -> str:
        if info.field_name == "url" and value and not value.startswith("https://"):
            raise ValueError(f"{value[:60]!r} is not an https URL: sign-in tokens must not travel in clear text")
        if info.field_name == "ca_certificates" and value and "-----BEGIN CERTIFICATE-----" not in value:
            raise ValueError("not a PEM certificate: paste the CA's certificate (-----BEGIN CERTIFICATE-----)")
        return value


class SignIn(Section):
    """Who signs in and who is an admin."""

    authenticator: Literal["native", "github"] = "native"
    admin_users: list[str] = []
    blocked_users: list[str] = []  # never let in, whatever their orgs or the roster say
    github: GitHub = GitHub()

    @field_validator("admin_users")
    @classmethod
    def _plain(cls, names: list[str]) -> list[str]:
        for i, name in enumerate(names):
            if not plain_username(name):
                raise _KeyProblems([(f"[{i}]", f"{name[:40]!r} is not a username: write plain usernames, e.g. [prof, ta1]")])
        return names

    @model_validator(mode="after")
    def _github_needs_client(self) -> SignIn:
        if self.authenticator == "github" and not self.github.client_id:
            raise _KeyProblems([(
                "github.client_id",
                "empty, but authenticator is 'github': set the OAuth app's client id here "
                "(and its secret in GITHUB_CLIENT_SECRET or github.client_secret_file)",
            )])
        return self


class Images(Section):
    """Single-user images: the default, and the only ones a profile may name."""

    default: str = DEFAULT_IMAGE
    allowed: list[str] = []  # images profiles may name; the default is always allowed


class Inventory(Section):
    """The GPU units: discovered by NVML, or the static list here (pools come from it)."""

    discovery: Literal["auto", "nvml", "static"] = "auto"
    gpus: list[dict[str, Any]] = []
    replicas_per_gpu: int = Field(1, ge=1, le=64)
    queue_max_wait: float = Field(300, ge=0, le=24 * 3600)
    # fair share: hours after which past GPU use counts half in the line's order (0: first come first served)
    fair_share_half_life: float = Field(24, ge=0, le=24 * 365)
    # reservations (group property gpu_reservations): minutes their unclaimed units stay kept
    reservation_grace_minutes: float = Field(10, ge=0, le=24 * 60)
    # shared slots: framework hints only, or CUDA MPS limits (`gpuhub node setup --mps`)
    shared_limit: Literal["hints", "mps"] = "hints"


def _size_field(value: Any, low: float, high: float) -> Any:
    if value is None:
        return None
    try:
        sizes.check_size(value, int(low), int(high))
    except sizes.SizeError as e:
        raise ValueError(str(e)) from None
    return value


class Profile(Section):
    """One choice on the spawn page: a pool (None: CPU only) and that server's own limits."""

    slug: str
    display_name: str = ""
    pool: str | None = None  # None: CPU only
    description: str = ""
    default: bool = False
    image: str = ""  # one of images.allowed; empty: images.default
    environment: dict[str, str] = {}
    cpu_limit: float | None = Field(None, ge=BOUNDS["cpu_limit"][0], le=BOUNDS["cpu_limit"][1])
    mem_limit: int | str | None = None

    @field_validator("mem_limit", mode="before")
    @classmethod
    def _mem(cls, value: Any) -> Any:
        return _size_field(value, *BOUNDS["mem_limit"])

    def spawner_entry(self) -> dict[str, Any]:
        """The entry of ``c.GPUDockerSpawner.gpu_profiles`` (image and environment are applied apart)."""
        entry = self.model_dump(exclude={"image", "environment"}, exclude_defaults=True)
        entry.setdefault("pool", None)
        return entry


class Limits(Section):
    """Limits of a server whose profile and quota set none (a profile's or quota's wins)."""

    default_mem_limit: int | str = DEFAULT_MEM_LIMIT
    default_cpu_limit: float = Field(DEFAULT_CPU_LIMIT, ge=BOUNDS["cpu_limit"][0], le=BOUNDS["cpu_limit"][1])
    pids_limit: int = Field(DEFAULT_PIDS_LIMIT, ge=64, le=4_194_304)

    @field_validator("default_mem_limit", mode="before")
    @classmethod
    def _mem(cls, value: Any) -> Any:
        if value is None:
            raise ValueError(f"there is no unlimited memory: give a size such as {DEFAULT_MEM_LIMIT!r}")
        return _size_field(value, *BOUNDS["mem_limit"])


#: the culler's timings: set here, they win over the culler's own config_file
CULLER_TIMINGS = ("every", "idle_cpu_timeout", "idle_gpu_timeout", "warn_seconds", "budget_warn_seconds",
                  "reclaim_idle_timeout", "reclaim_after")


class Culler(Section):
    """The GPU-aware idle culler service (hub_services/culler)."""

    enabled: bool = True
    port: Port = 8767
    config_file: str = ""  # JSON or traitlets .py: timeouts, warning, thresholds
    gpu_agent_urls: list[str] = []
    gpu_agent_token_file: str = ""
    # seconds; null: the culler's own default, or what config_file sets (a value here wins)
    every: float | None = Field(None, ge=0, le=24 * 3600)
    idle_cpu_timeout: float | None = Field(None, ge=0)
    idle_gpu_timeout: float | None = Field(None, ge=0)
    warn_seconds: float | None = Field(None, ge=0)
    budget_warn_seconds: float | None = Field(None, ge=0)  # "budget running low", before it runs out
    # units others are entitled to (a group's guarantee or reservation) and wait for: the idle
    # timeout of servers over their group's share, and how long a reservation's member waits
    # before a lent unit is taken back, busy or not (then warn_seconds more)
    reclaim_idle_timeout: float | None = Field(None, ge=0)
    reclaim_after: float | None = Field(None, ge=0)



class Tutorials(Section):
    """The tutorials servers mount, and the tutorial-sync service that publishes a Git branch."""

    source: str = ""  # volume name or absolute host path; empty: the synced store, else gpuhub-tutorials
    repo: str = ""  # Git URL: runs the tutorial-sync service
    branch: str = "main"
    store: str = ""  # empty: <data_dir>/tutorials
    poll_interval: float = Field(60, ge=1, le=24 * 3600)
    max_total_size: int | str = "10G"
    max_files: int = Field(100000, ge=1)
    port: Port = 8765
    # a file holding the token of the "tutorial-mirror" service (scope custom:gpuhub-tutorials:read
    # only): the per-node mirrors fetch the published tutorials with it (deploy/docs/tutorial-store.md)
    mirror_token_file: str = ""


    @field_validator("source")
    @classmethod
    def _mountable(cls, value: str) -> str:
        problem = check_source("source", value)
        if problem:
            raise ValueError(problem.removeprefix("source: "))
        return value

    @field_validator("max_total_size", mode="before")
    @classmethod
    def _total(cls, value: Any) -> Any:
        return _size_field(value, 1024**2, 1024**5)

    @property
    def max_total_mb(self) -> int:
        return sizes.parse_size(self.max_total_size) // 1024**2


class Metrics(Section):
    """The per-user metrics exporter service and Prometheus's read:metrics token."""

    exporter_port: Annotated[int | None, BeforeValidator(_port)] = None  # None: no exporter service
    prometheus_token_file: str = ""  # registers a read:metrics service for Prometheus
    prometheus_url: str = ""  # the GPU Hub page's charts read it (e.g. http://prometheus:9090); "": the ledger



class Services(Section):
    """The hub's other services (the 'GPU Hub' admin pages)."""

    admin_port: Port = 8766



class Instructors(Section):
    """Instructor help: members of ``group`` open an attendee's running server from the GPU Hub
    page's Help tab (a JupyterHub share of that server, audited, shown to the attendee)."""

    group: str = "instructors"  # a hub group (e.g. filled by the roster); "" turns help off
    access: Literal["full"] = "full"  # full: the helper may do what the attendee can in the server

    @field_validator("group")
    @classmethod
    def _group(cls, value: str) -> str:
        if value and (len(value) > 255 or any(ord(ch) < 32 for ch in value) or "/" in value):
            raise ValueError(f"{value[:40]!r} is not a group name: write a hub group's name, or \"\" to turn help off")
        return value


class GPUHubConfig(Section):
    """The whole of ``gpuhub.yaml``."""

    hub: Hub = Hub()
    sign_in: SignIn = SignIn()
    images: Images = Images()
    inventory: Inventory = Inventory()
    profiles: list[Profile] = []
    limits: Limits = Limits()
    quota_defaults: dict[str, Any] = {}
    culler: Culler = Culler()
    tutorials: Tutorials = Tutorials()
    metrics: Metrics = Metrics()
    services: Services = Services()
    instructors: Instructors = Instructors()
    deploy: Deploy | None = None  # the stack `gpuhub deploy` runs (core/deployconfig.py)
    storage: Storage = Storage()

    @field_validator("quota_defaults")
    @classmethod
    def _quota(cls, value: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(value) - set(FIELDS))
        if unknown:
            raise _KeyProblems(
                [(str(unknown[0]), f"unknown key: check its spelling, or remove it (quota fields: {', '.join(FIELDS)})")]
            )
        try:
            parse_quota(value)
        except QuotaError as e:
            raise _KeyProblems([(e.field, f"{e.message}: fix it, or leave it out")]) from None
        memory = value.get("mem_limit")
        if isinstance(memory, str) and memory.strip().lower() not in ("", "unlimited", "none", "null"):
            try:
                sizes.parse_size(memory)
            except sizes.SizeError as e:
                raise _KeyProblems([("mem_limit", str(e))]) from None
        return value

    @model_validator(mode="after")
    def _profiles_fit(self) -> GPUHubConfig:
        problems = list(_profile_problems(self)) + list(deploy_problems(self))
        if problems:
            raise _KeyProblems(problems)
        return self

    def pools(self) -> set[str] | None:
        """The pools of the static inventory; None where they are only known at run time."""
        if self.hub.spawner == "swarm" or (self.inventory.discovery != "static" and not self.inventory.gpus):
            return None
        units = units_from_gpus(self.inventory.gpus, self.inventory.replicas_per_gpu, setting="inventory.gpus")
        return {u.pool for u in units}


def _profile_problems(cfg: GPUHubConfig):
    allowed = [cfg.images.default, *cfg.images.allowed]
    try:
        pools = cfg.pools()
    except InventoryError as e:
        yield e.setting, f"{e.problem}: {e.fix[0].lower()}{e.fix[1:]}"
        return
    seen: set[str] = set()
    for i, p in enumerate(cfg.profiles):
        if p.slug in seen:
            yield f"profiles[{i}].slug", f"{p.slug!r} is used by an earlier profile: give each profile its own slug"
        seen.add(p.slug)
        if p.image and p.image not in allowed:
            yield f"profiles[{i}].image", (
                f"{p.image!r} is not an allowed image: add it to images.allowed, or use one of "
                + ", ".join(repr(a) for a in allowed)
                + f" in profile {p.slug!r}"
            )
        if p.pool is not None and pools is not None and p.pool not in pools:
            have = ", ".join(sorted(pools)) or "none"
            yield f"profiles[{i}].pool", (
                f"{p.pool!r} is not a pool of inventory.gpus (pools: {have}): name one of them, "
                "or write pool: null for CPU only"
            )


class ConfigFileError(Exception):
    """``gpuhub.yaml`` cannot work: :attr:`lines` are one line per problem, key path first."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


# ---- errors: one line each, key path, bad value, fix -------------------------------------

_FIXES = {
    "int_parsing": "write a whole number",
    "int_type": "write a whole number",
    "int_from_float": "write a whole number",
    "float_parsing": "write a number",
    "float_type": "write a number",
    "bool_parsing": "write true or false",
    "bool_type": "write true or false",
    "string_type": "write text (quote it)",
    "list_type": "write a list",
    "dict_type": "write a mapping of keys to values",
    "model_type": "write a mapping of keys to values",
    "missing": "add it",
    "literal_error": "",
    "greater_than_equal": "",
    "less_than_equal": "",
}


def key_path(loc: tuple[Any, ...]) -> str:
    """``('profiles', 2, 'mem_limit')`` -> ``profiles[2].mem_limit``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _known_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys the section at ``loc`` accepts (for an unknown-key message)."""
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        inner = getattr(annotation, "__args__", (annotation,))
        nested = next((a for a in inner if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if nested is None:
            return []
        model = nested
    return list(model.model_fields)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def error_lines(exc: ValidationError) -> list[str]:
    """One line per pydantic error: ``key.path: bad value ...: fix``."""
    lines: list[str] = []
    for err in exc.errors(include_url=False):
        loc, kind, ctx = tuple(err["loc"]), err["type"], err.get("ctx") or {}
        raw = ctx.get("error")
        if isinstance(raw, _KeyProblems):
            lines += [f"{key_path(loc + tuple(_split(k)))}: {m}" for k, m in raw.problems]
            continue
        where = key_path(loc)
        if kind == "extra_forbidden":
            known = ", ".join(_known_keys(GPUHubConfig, loc))
            lines.append(f"{where}: unknown key: check its spelling, or remove it (known keys here: {known})")
        elif kind == "missing":
            lines.append(f"{where}: missing: add it")
        elif kind == "value_error":
            lines.append(f"{where}: {raw if raw is not None else err['msg']}")
        else:
            fix = _FIXES.get(kind, "")
            msg = err["msg"][0].lower() + err["msg"][1:]
            lines.append(f"{where}: {_short(err.get('input'))}: {msg}" + (f": {fix}" if fix else ""))
    return lines


def _split(path: str) -> list[Any]:
    parts: list[Any] = []
    for chunk in path.split("."):
        name, _, rest = chunk.partition("[")
        if name:
            parts.append(name)
        if rest:
            parts.append(int(rest.rstrip("]")))
    return parts


def validate(raw: Any) -> GPUHubConfig:
    """The model of ``raw`` (a parsed gpuhub.yaml), or ConfigFileError."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigFileError(["(top level): the file must be a mapping of sections such as hub:, profiles:"])
    try:
        return GPUHubConfig.model_validate(dict(raw))
    except ValidationError as e:
        raise ConfigFileError(error_lines(e)) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error (PyYAML
    keeps the last one silently: a pasted block would override an earlier one unseen)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _value in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice in one mapping (keep one)", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_file(path: str | Path) -> dict[str, Any]:
    """The parsed YAML of ``path``, or ConfigFileError saying why it cannot be read."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or "not text"
        raise ConfigFileError([f"{path}: cannot read it ({reason}): point GPUHUB_CONFIG at a readable file"]) from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "not YAML"
        raise ConfigFileError([f"{path}: not valid YAML ({problem}{at}): fix the YAML"]) from None
    return raw if raw is not None else {}


def check_file(path: str | Path) -> GPUHubConfig:
    """Validate the file at ``path`` alone (no environment): what ``gpuhub config check`` does."""
    return validate(read_file(path))


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def load_config(
    path: str | Path | None = None,
    environ: Mapping[str, str] = os.environ,
    notify: Callable[[str], None] = _stderr,
) -> GPUHubConfig:
    """The settings of this hub: the file (``path``, else ``GPUHUB_CONFIG``, else the embedded
    default), then the deprecated ``GPUHUB_*`` variables laid over it, each with a notice.

    Raises ConfigFileError (the file's problems, key paths first) or
    :class:`gpuhub_spawner.core.hubconfig.ConfigError` (a variable, in today's words).
    """
    path = path or environ.get("GPUHUB_CONFIG", "").strip() or None
    raw = read_file(path) if path else {}
    if not isinstance(raw, Mapping):
        raise ConfigFileError([f"{path}: the file must be a mapping of sections such as hub:, profiles:"])
    raw = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in raw.items()}
    used = env_overlay(raw, environ)
    for variable, key in used:
        notify(f"gpuhub: {variable} is deprecated (read for one more release): set {key} in gpuhub.yaml instead")
    try:
        return validate(raw)
    except ConfigFileError as e:
        raise ConfigFileError([_from_variable(line, used) for line in e.lines]) from None


def _from_variable(line: str, used: list[tuple[str, str]]) -> str:
    """``line`` with the variable that set its key, where one did: ``(set by GPUHUB_X)``."""
    for variable, key in used:
        if line.startswith((key + ":", key + ".", key + "[")):
            return f"{line} (set by {variable})"
    return line


def service_settings(cfg: GPUHubConfig) -> dict[str, Any]:
    """The settings a service takes from gpuhub.yaml, by the services' trait names (each service
    applies those of its traits found here as its lowest layer: ``hub_services/common/base.py``).

    Empty values are left out, so a service keeps its own default (as for an unset variable);
    so are culler timings the file leaves null.
    """
    settings = {
        "usage_db_url": cfg.hub.usage_db_url,
        "quota_defaults": cfg.quota_defaults,
        "gpu_agent_urls": cfg.culler.gpu_agent_urls,
        "gpu_inventory": cfg.inventory.gpus,
        "gpu_discovery": cfg.inventory.discovery,
        "gpu_replicas_per_gpu": cfg.inventory.replicas_per_gpu,
        "gpu_profiles": [p.spawner_entry() for p in cfg.profiles],
        "spawner": cfg.hub.spawner,
        "docker_host": cfg.hub.docker_host,
        **{name: getattr(cfg.culler, name) for name in CULLER_TIMINGS},
        # tutorial-sync's (its store defaults to a place only the hub knows: the hub passes it)
        "repo_url": cfg.tutorials.repo,
        "branch": cfg.tutorials.branch,
        "poll_interval": cfg.tutorials.poll_interval,
        "max_total_mb": cfg.tutorials.max_total_mb,
        "max_files": cfg.tutorials.max_files,
    }
    return {name: value for name, value in settings.items() if value not in ("", [], {}, None)}


def file_settings(environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """What a service reads: :func:`service_settings` of the file named by ``GPUHUB_CONFIG`` in
    ``environ``, alone; none without one.

    Alone: the deprecated ``GPUHUB_*`` variables are read by the hub, which passes a service
    what they change (the service's own environment holds variables of the same names that are
    not deprecated there).  Upstream ones (``GITHUB_CLIENT_ID``) count, as for the hub.  The hub
    calls this too, to know what each service reads. Raises ConfigFileError.
    """
    path = environ.get("GPUHUB_CONFIG", "").strip()
    if not path:
        return {}
    upstream = {name: environ[name] for name in UPSTREAM if environ.get(name, "").strip()}
    return service_settings(load_config(path, upstream, notify=lambda line: None))

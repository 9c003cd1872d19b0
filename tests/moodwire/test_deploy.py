"""docker-compose.yml, the Dockerfile and the FAISS extras, checked by parsing them.

No Docker engine runs here, so each rule is a function that reads the files and returns
the problems it finds (an empty list: none); the tests assert the shipped files have
none, and plant broken copies in a temporary directory to show each rule catches what
it is there for. What a service writes, which variables exist and which commands the
CLI has all come from the code (the settings each service gets, ``Settings`` itself,
the CLI's parser), not from lists kept here.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib.metadata as md
import os
import re
import shlex
import subprocess
import sys
import tomllib
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from moodwire.cli import build_parser
from moodwire.processes.learner import learner_dir
from moodwire.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
PYPROJECT = ROOT / "pyproject.toml"
SETUP = ROOT / "scripts" / "setup.sh"

# -- reading the files ---------------------------------------------------------------------


def _interpolate(value: object) -> str:
    """As compose does with the variable unset: ``${VAR:-default}`` -> default, ``${VAR}`` -> ''."""
    text = str(value)
    text = re.sub(r"\$\{\w+:?-([^}]*)\}", r"\1", text)
    text = re.sub(r"\$\{\w+\}", "", text)
    return text.replace("$$", "$")


def load_compose(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


@dataclasses.dataclass
class Stage:
    name: str
    base: str
    env: dict[str, str]
    user: str | None
    runs: list[str]


def dockerfile_stages(path: Path) -> list[Stage]:
    """The Dockerfile's stages in order, with their ENV, last USER and RUN commands."""
    text = re.sub(r"\\\n", " ", path.read_text())  # join continued lines
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip()
        elif word == "FROM":
            parts = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), ""), parts[0])
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(name, base, {}, None, []))
        elif word == "ENV":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                stages[-1].env[key] = value
        elif word == "USER":
            stages[-1].user = rest.strip()
        elif word == "RUN":
            stages[-1].runs.append(rest)
    return stages


def _target(service: dict[str, Any], stages: list[Stage]) -> Stage:
    build = service.get("build")
    name = build.get("target") if isinstance(build, dict) else None
    return next(s for s in stages if s.name == name) if name else stages[-1]


def moodwire_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run this repository's image (built from it)."""
    return {n: s for n, s in compose["services"].items() if s.get("build") is not None}


def _command(service: dict[str, Any]) -> list[str]:
    cmd = service.get("command", [])
    return [_interpolate(a) for a in (shlex.split(cmd) if isinstance(cmd, str) else cmd)]


@contextlib.contextmanager
def _environment(env: dict[str, str]) -> Iterator[None]:
    """Exactly ``env``'s MOODWIRE_* variables in os.environ (this process's own removed)."""
    saved = dict(os.environ)
    try:
        for key in [k for k in os.environ if k.startswith("MOODWIRE_")]:
            del os.environ[key]
        os.environ.update(env)
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def service_env(service: dict[str, Any], stages: list[Stage]) -> dict[str, str]:
    """The MOODWIRE_* environment a service's process sees: its image's, then its own."""
    env = {k: v for k, v in _target(service, stages).env.items() if k.startswith("MOODWIRE_")}
    own = service.get("environment") or {}
    if isinstance(own, list):
        own = dict(item.split("=", 1) for item in own)
    env.update({k: _interpolate(v) for k, v in own.items() if v is not None})
    return env


def service_settings(service: dict[str, Any], stages: list[Stage]) -> Settings:
    with _environment(service_env(service, stages)):
        return Settings()


@dataclasses.dataclass
class Mount:
    source: str | None
    target: PurePosixPath
    read_only: bool
    kind: str  # volume | bind | tmpfs


def mounts(service: dict[str, Any], compose: dict[str, Any]) -> list[Mount]:
    named = set(compose.get("volumes") or {})
    out = []
    for entry in service.get("volumes") or []:
        if isinstance(entry, str):
            parts = _interpolate(entry).split(":")
            if len(parts) == 1:  # an anonymous volume: lost with the container
                out.append(Mount(None, PurePosixPath(parts[0]), False, "anonymous"))
                continue
            source, target, mode = parts[0], parts[1], (parts[2] if len(parts) > 2 else "")
            kind = "volume" if source in named else "bind"
            out.append(Mount(source, PurePosixPath(target), "ro" in mode.split(","), kind))
        else:
            out.append(
                Mount(
                    entry.get("source"),
                    PurePosixPath(entry["target"]),
                    bool(entry.get("read_only")),
                    entry.get("type", "volume"),
                )
            )
    return out


def _mount_of(path: Path, service_mounts: list[Mount]) -> Mount | None:
    """The innermost mount ``path`` lies on (an absolute path in the container)."""
    p = PurePosixPath(str(path))
    hits = [m for m in service_mounts if p == m.target or m.target in p.parents]
    return max(hits, key=lambda m: len(m.target.parts), default=None)


# -- what each command writes, from its settings -------------------------------------------


def _sqlite_dir(s: Settings) -> dict[str, Path]:
    url = s.resolved_store_url()
    if not url.startswith("sqlite"):
        return {}
    return {"the SQLite store": Path(url.split(":///", 1)[1]).parent}


# Which of its settings' paths each long-running or one-shot command writes (the
# development commands, broker, demo and bench, write logs in data_dir; compose runs none).
WRITES: dict[str, Callable[[Settings], dict[str, Path]]] = {
    "worker": lambda s: {"the index snapshots (index_dir)": s.resolved_index_dir()},
    "learner": lambda s: {
        "the registry (versions, lock)": s.resolved_registry(),
        "the learner's memory and state (data_dir/learner)": learner_dir(s),
    },
    "bootstrap": lambda s: {
        "the registry (versions, lock)": s.resolved_registry(),
        "the learner's memory and state (data_dir/learner)": learner_dir(s),
    },
    "dashboard": lambda s: {"the registry (serving pointer)": s.resolved_registry()},
}
# Where a state is written by one service and read by others: one volume for all of them
# (commands None: every service of ours).
SHARED: dict[str, tuple[tuple[str, ...] | None, Callable[[Settings], Path]]] = {
    "registry": (None, lambda s: s.resolved_registry()),
    "learner state": (("learner", "bootstrap"), learner_dir),
    "index": (("worker", "dashboard"), lambda s: s.resolved_index_dir()),
}


def problems_with_written_paths(compose_path: Path, dockerfile: Path = DOCKERFILE) -> list[str]:
    compose, stages = load_compose(compose_path), dockerfile_stages(dockerfile)
    problems = []
    for name, svc in moodwire_services(compose).items():
        cmd = _command(svc)
        if not cmd or cmd[0] not in WRITES:
            problems.append(f"{name}: command {cmd} is not one this check knows what it writes")
            continue
        s = service_settings(svc, stages)
        svc_mounts = mounts(svc, compose)
        for what, path in {**WRITES[cmd[0]](s), **_sqlite_dir(s)}.items():
            if not path.is_absolute():
                problems.append(f"{name}: {what} at relative path {path} (the image's workdir)")
                continue
            m = _mount_of(path, svc_mounts)
            if m is None or m.kind not in ("volume", "bind") or m.read_only:
                problems.append(f"{name}: {what} {path} is on no writable volume")
    # What one service writes and another reads is the same volume in both.
    users: dict[str, dict[str | None, list[str]]] = {}
    for name, svc in moodwire_services(compose).items():
        s = service_settings(svc, stages)
        svc_mounts = mounts(svc, compose)
        for what, (commands, where) in SHARED.items():
            if commands is None or (_command(svc) or [""])[0] in commands:
                m = _mount_of(where(s), svc_mounts)
                users.setdefault(what, {}).setdefault(m.source if m else None, []).append(name)
    for what, by_source in users.items():
        if len(by_source) > 1 or None in by_source:
            problems.append(f"{what} is not one shared volume: {by_source}")
    return problems


# -- commands, variables, settings -----------------------------------------------------------


def problems_with_commands(compose_path: Path) -> list[str]:
    compose = load_compose(compose_path)
    parser = build_parser()
    problems = []
    for name, svc in moodwire_services(compose).items():
        argv = _command(svc)
        try:
            with contextlib.redirect_stderr(open(os.devnull, "w")):  # noqa: SIM115
                parser.parse_args(argv)
        except SystemExit:
            problems.append(f"{name}: `moodwire {' '.join(argv)}` is not a valid command")
    return problems


def _fields(model: type) -> dict[str, Any]:
    """Field name -> type of a pydantic model or a dataclass."""
    if isinstance(model, type) and issubclass(model, BaseModel):
        return {n: f.annotation for n, f in model.model_fields.items()}
    if dataclasses.is_dataclass(model):
        hints = typing.get_type_hints(model)
        return {f.name: hints[f.name] for f in dataclasses.fields(model)}
    return {}


def _nested(annotation: Any) -> list[type]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [t for a in typing.get_args(annotation) for t in _nested(a)]
    return [annotation] if _fields(annotation) else []


def settings_variables(model: type = Settings, prefix: str = "MOODWIRE_") -> set[str]:
    """Every MOODWIRE_* variable the settings read: each field, and each nested one with ``__``."""
    names = set()
    for name, annotation in _fields(model).items():
        key = f"{prefix}{name.upper()}"
        names.add(key)
        for inner in _nested(annotation):
            names |= settings_variables(inner, f"{key}__")
    return names


def problems_with_variables(compose_path: Path, dockerfile: Path = DOCKERFILE) -> list[str]:
    compose, stages = load_compose(compose_path), dockerfile_stages(dockerfile)
    known = settings_variables()
    problems = []
    for name, svc in compose["services"].items():
        env = svc.get("environment") or {}
        keys = [i.split("=", 1)[0] for i in env] if isinstance(env, list) else list(env)
        problems += [
            f"{name}: {k} is not a setting Moodwire reads"
            for k in keys
            if k.startswith("MOODWIRE_") and k.upper() not in known
        ]
    for stage in stages:
        problems += [
            f"Dockerfile stage {stage.name}: {k} is not a setting Moodwire reads"
            for k in stage.env
            if k.startswith("MOODWIRE_") and k.upper() not in known
        ]
    for name, svc in moodwire_services(compose).items():
        try:
            service_settings(svc, stages)
        except Exception as exc:  # noqa: BLE001 - the problem is what is reported
            problems.append(f"{name}: its environment is not valid settings: {exc}")
    return problems


# -- health, dependencies, approval ---------------------------------------------------------

PROBED = ("worker", "learner")  # the services with /healthz and /readyz (stream/health.py)


def _probe_url(svc: dict[str, Any]) -> str | None:
    test = (svc.get("healthcheck") or {}).get("test")
    if not test or test in (["NONE"], "NONE") or (svc.get("healthcheck") or {}).get("disable"):
        return None
    text = test if isinstance(test, str) else " ".join(str(t) for t in test)
    found = re.search(r"https?://[^\s'\"]+", text)
    return found.group(0) if found else None


def problems_with_health(compose_path: Path, dockerfile: Path = DOCKERFILE) -> list[str]:
    compose, stages = load_compose(compose_path), dockerfile_stages(dockerfile)
    services = moodwire_services(compose)
    problems = []
    for name, svc in services.items():
        cmd = _command(svc)
        if cmd[:1] and cmd[0] in PROBED:
            s = service_settings(svc, stages)
            url = _probe_url(svc)
            want = rf"^http://(127\.0\.0\.1|localhost):{s.metrics_port}/(healthz|readyz)$"
            if s.metrics_port is None:
                problems.append(f"{name}: no MOODWIRE_METRICS_PORT, so no health endpoint")
            elif url is None or not re.match(want, url):
                problems.append(
                    f"{name}: healthcheck {url} is not /healthz or /readyz on port {s.metrics_port}"
                )
            if s.metrics_host not in ("0.0.0.0", "127.0.0.1", "localhost", "::"):
                problems.append(f"{name}: metrics on {s.metrics_host}, unreachable on loopback")
            test = (svc.get("healthcheck") or {}).get("test") or []
            if isinstance(test, list) and test[:1] == ["CMD"] and test[1:2] != ["python"]:
                problems.append(f"{name}: healthcheck runs {test[1:2]}, not the image's python")
            needs = svc.get("depends_on") or {}
            for dep in ("kafka", "postgres"):
                cond = needs.get(dep, {}).get("condition") if isinstance(needs, dict) else None
                if cond != "service_healthy":
                    problems.append(f"{name}: does not wait for {dep} to be healthy")
    for name in PROBED:
        if not any(_command(s)[:1] == [name] for s in services.values()):
            problems.append(f"no service runs `moodwire {name}`")
    return problems


def problems_with_approval(compose_path: Path, dockerfile: Path = DOCKERFILE) -> list[str]:
    compose, stages = load_compose(compose_path), dockerfile_stages(dockerfile)
    return [
        f"{name}: the learner promotes without an operator's approval"
        for name, svc in moodwire_services(compose).items()
        if _command(svc)[:1] == ["learner"]
        and not service_settings(svc, stages).learner.require_approval
    ]


# -- the image's user, Kafka's log --------------------------------------------------------


def _is_root(user: str | None) -> bool:
    return user is None or user.split(":")[0] in ("root", "0", "")


def problems_with_users(compose_path: Path, dockerfile: Path) -> list[str]:
    compose, stages = load_compose(compose_path), dockerfile_stages(dockerfile)
    problems = []
    runtime = {_target(s, stages).name for s in moodwire_services(compose).values()}
    runtime |= {stages[-1].name, "cuda"} & {s.name for s in stages}
    for stage in stages:
        if stage.name in runtime and _is_root(stage.user):
            problems.append(f"Dockerfile stage {stage.name} runs as root ({stage.user})")
    for name, svc in moodwire_services(compose).items():
        if "user" in svc and _is_root(str(svc["user"])):
            problems.append(f"{name}: compose runs it as root")
    return problems


def problems_with_kafka_log(compose_path: Path) -> list[str]:
    compose = load_compose(compose_path)
    problems = []
    for name, svc in compose["services"].items():
        if not str(svc.get("image", "")).startswith("apache/kafka"):
            continue
        env = svc.get("environment") or {}
        dirs = _interpolate(env.get("KAFKA_LOG_DIRS", "")).split(",")
        if dirs == [""]:
            problems.append(f"{name}: no KAFKA_LOG_DIRS: the image writes /tmp/kraft-combined-logs")
            continue
        for d in dirs:
            m = _mount_of(Path(d), mounts(svc, compose))
            if m is None or m.kind != "volume" or m.read_only:
                problems.append(f"{name}: Kafka's log {d} is on no named volume")
        if not env.get("CLUSTER_ID"):
            problems.append(f"{name}: no CLUSTER_ID: the log on the volume needs a stable one")
    return problems


# -- FAISS: one build per install ----------------------------------------------------------


def _req_name(req: str) -> str:
    return re.sub(r"[-_.]+", "-", re.split(r"[<>=!~\[ ;]", req, maxsplit=1)[0]).lower()


def resolve(extras: set[str], project: dict[str, Any]) -> set[str]:
    """The distributions ``pip install '.[EXTRAS]'`` asks for (self-references followed)."""
    optional = project["optional-dependencies"]
    wanted, seen, todo = {_req_name(r) for r in project["dependencies"]}, set(), list(extras)
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        if extra not in optional:
            raise KeyError(f"no extra {extra!r} in pyproject.toml")
        for req in optional[extra]:
            inner = re.fullmatch(rf"{project['name']}\[([^\]]+)\]", req.replace(" ", ""))
            if inner:
                todo += inner.group(1).split(",")
            else:
                wanted.add(_req_name(req))
    return wanted


def faiss_builds(dists: set[str]) -> set[str]:
    """The distributions among ``dists`` that provide the ``faiss`` module: FAISS's builds
    are all named faiss-* (faiss-cpu, faiss-gpu, faiss-gpu-cu12, ...)."""
    return {d for d in dists if re.fullmatch(r"faiss(-[a-z0-9-]+)?", d)}


def install_targets(dockerfile: Path, setup: Path) -> dict[str, set[str]]:
    """Every ``pip install`` of this project: where -> the extras it names."""
    spec = re.compile(r"""(?:\s|["'])(?:-e\s+)?["']?(?:\.|/src)(?:\[([^\]]*)\])?["']?(?=\s|$)""")
    out: dict[str, set[str]] = {}
    for stage in dockerfile_stages(dockerfile):
        for run in stage.runs:
            for m in spec.finditer(" " + run + " "):
                out[f"Dockerfile {stage.name}"] = set(filter(None, (m.group(1) or "").split(",")))
    for i, line in enumerate(setup.read_text().splitlines(), 1):
        if "pip install" in line and not line.lstrip().startswith("#"):
            for m in spec.finditer(" " + line + " "):
                out[f"{setup.name}:{i}"] = set(filter(None, (m.group(1) or "").split(",")))
    return out


def problems_with_faiss(pyproject: Path, dockerfile: Path, setup: Path) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    problems = []
    base = faiss_builds({_req_name(r) for r in project["dependencies"]})
    if base:
        problems.append(f"the base dependencies install {sorted(base)}: no extra can opt out")
    missing = {"cpu", "gpu"} - set(project["optional-dependencies"])
    if missing:
        return [*problems, f"no extra {sorted(missing)}: FAISS's builds are extras cpu and gpu"]
    cpu, gpu = (faiss_builds(resolve({e}, project)) for e in ("cpu", "gpu"))
    if len(cpu) != 1 or len(gpu) != 1 or cpu & gpu:
        problems.append(f"extras cpu {sorted(cpu)} and gpu {sorted(gpu)}: not one build each")
    for extra in project["optional-dependencies"]:
        found = faiss_builds(resolve({extra}, project))
        if len(found) > 1:
            problems.append(f"extra {extra} installs {sorted(found)}: two `faiss` modules")
    targets = install_targets(dockerfile, setup)
    if not targets:
        problems.append("no `pip install` of the project found")
    for where, extras in targets.items():
        found = faiss_builds(resolve(extras, project))
        if len(found) != 1:
            problems.append(f"{where} installs .[{','.join(sorted(extras))}]: {sorted(found)}")
    return problems


# -- the shipped files ---------------------------------------------------------------------


def test_the_shipped_compose_file_and_image_have_no_problem() -> None:
    assert problems_with_written_paths(COMPOSE) == []
    assert problems_with_commands(COMPOSE) == []
    assert problems_with_variables(COMPOSE) == []
    assert problems_with_health(COMPOSE) == []
    assert problems_with_approval(COMPOSE) == []
    assert problems_with_users(COMPOSE, DOCKERFILE) == []
    assert problems_with_kafka_log(COMPOSE) == []
    assert problems_with_faiss(PYPROJECT, DOCKERFILE, SETUP) == []


def test_compose_runs_kafka_in_kraft_mode_with_postgres_workers_learners_and_a_bootstrap() -> None:
    compose = load_compose(COMPOSE)
    services = compose["services"]
    assert {"kafka", "postgres", "worker", "learner", "dashboard", "bootstrap"} <= set(services)
    kafka_env = services["kafka"]["environment"]
    assert set(kafka_env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert kafka_env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    # The bootstrap is one-shot and opt-in (`--profile setup`), reading ./data read-only.
    boot = services["bootstrap"]
    assert boot["profiles"] == ["setup"] and "restart" not in boot
    data = [m for m in mounts(boot, compose) if m.kind == "bind"]
    assert [(m.source, m.read_only) for m in data] == [("./data", True)]
    assert _command(boot)[_command(boot).index("--train") + 1].startswith(str(data[0].target))
    # Several workers and a standby learner by default.
    assert services["worker"]["deploy"]["replicas"] >= 2
    assert services["learner"]["deploy"]["replicas"] == 2


def test_every_variable_of_the_settings_is_found_nested_ones_included() -> None:
    names = settings_variables()
    assert {
        "MOODWIRE_STORE_URL",
        "MOODWIRE_TOPICS__NEWS",
        "MOODWIRE_LEARNER__REQUIRE_APPROVAL",
        "MOODWIRE_ALERTS__NEGATIVE_SURGE__Z",
    } <= names
    # And each one found is one pydantic-settings really reads.
    with _environment({"MOODWIRE_ALERTS__NEGATIVE_SURGE__Z": "7.5"}):
        assert Settings().alerts.negative_surge.z == 7.5


def test_the_healthcheck_command_passes_on_ready_and_fails_otherwise() -> None:
    """Each healthcheck's own argv, run here against a real health server on its port."""
    from stream.health import HealthServer
    from stream.outage import Health

    compose = load_compose(COMPOSE)
    for name in PROBED:
        test = compose["services"][name]["healthcheck"]["test"]
        state = {"ready": True}
        server = HealthServer(Health(name), lambda st=state: (st["ready"], {}), port=0).start()
        try:
            port = re.search(r"127\.0\.0\.1:(\d+)", " ".join(test)).group(1)
            argv = [a.replace(f":{port}/", f":{server.port}/") for a in test[1:]]
            argv[0] = sys.executable  # the image's `python`
            assert subprocess.run(argv, capture_output=True, timeout=30).returncode == 0, name
            state["ready"] = False
            assert subprocess.run(argv, capture_output=True, timeout=30).returncode != 0, name
        finally:
            server.close()
        # Nothing listening: unhealthy too.
        assert subprocess.run(argv, capture_output=True, timeout=30).returncode != 0, name


def test_the_image_holds_every_package_and_file_the_build_needs() -> None:
    project = tomllib.loads(PYPROJECT.read_text())
    copied = set()
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            copied.update(a for a in line.split()[1:-1] if not a.startswith("--"))
    packages = [p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]]
    assert sorted(p for p in packages if p not in copied) == []
    needed = {"pyproject.toml", project["project"]["readme"], *project["project"]["license-files"]}
    assert sorted(needed - copied) == []
    # Every top-level package of ours is one the build includes.
    ours = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests"}
    assert sorted(ours - set(packages)) == []
    # ...and none of them is kept out of the build context.
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert sorted(copied & set(ignored)) == []


def test_the_image_has_a_cpu_default_and_a_cuda_target_as_user_10001() -> None:
    stages = {s.name: s for s in dockerfile_stages(DOCKERFILE)}
    assert dockerfile_stages(DOCKERFILE)[-1].name == "cpu"  # `docker build .` builds it
    assert stages["cuda"].base.startswith("nvidia/cuda:") and "runtime" in stages["cuda"].base
    for name in ("cpu", "cuda"):
        assert stages[name].user == "10001:10001"
        assert any("--uid 10001" in r for r in stages[name].runs)
        # The user owns its data directory, and only that: the code stays root's.
        chowns = [r for r in stages[name].runs if "chown" in r]
        assert chowns and all(
            re.search(r"chown -R moodwire:moodwire /var/lib/moodwire$", c) for c in chowns
        )
    cuda_build = " ".join(stages["build-cuda"].runs)
    assert "whl/cu" in stages["build-cuda"].runs[0] or "TORCH_CUDA_INDEX" in cuda_build
    assert "/whl/cpu" in " ".join(stages["build-cpu"].runs)
    assert install_targets(DOCKERFILE, SETUP)["Dockerfile build-cuda"] >= {"gpu"}
    assert install_targets(DOCKERFILE, SETUP)["Dockerfile build-cpu"] >= {"cpu"}


def test_faiss_cpu_provides_the_faiss_module_the_index_imports() -> None:
    # The rule "faiss-* provides `faiss`" checked on the build installed here.
    assert "faiss-cpu" in {_req_name(d) for d in md.packages_distributions()["faiss"]}


def test_without_either_faiss_build_the_index_names_the_extras() -> None:
    code = "import sys; sys.modules['faiss'] = None; import retrieval.index"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ModuleNotFoundError: faiss is not installed")
    assert "moodwire[cpu]" in last and "moodwire[gpu]" in last and "never both" in last


def test_setup_script_is_valid_bash() -> None:
    assert subprocess.run(["bash", "-n", str(SETUP)], timeout=30).returncode == 0


# -- each rule catches what it is there for ------------------------------------------------


def _plant(tmp_path: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    compose = copy.deepcopy(load_compose(COMPOSE))
    change(compose)
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(compose, sort_keys=False))
    return path


def _env(service: str, **changes: str | None) -> Callable[[dict[str, Any]], None]:
    def change(compose: dict[str, Any]) -> None:
        env = compose["services"][service]["environment"]
        for key, value in changes.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value

    return change


def _drop_volume(service: str, target: str) -> Callable[[dict[str, Any]], None]:
    def change(compose: dict[str, Any]) -> None:
        svc = compose["services"][service]
        before = len(svc["volumes"])
        svc["volumes"] = [v for v in svc["volumes"] if f":{target}" not in v]
        assert len(svc["volumes"]) < before

    return change


def _set(service: str, key: str, value: object) -> Callable[[dict[str, Any]], None]:
    def change(compose: dict[str, Any]) -> None:
        compose["services"][service][key] = value

    return change


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        # The learner's memory in the container (the bug this file had).
        (_drop_volume("learner", "/var/lib/moodwire/learner"), "learner: the learner's memory"),
        (_env("learner", MOODWIRE_DATA_DIR="/tmp/elsewhere"), "learner: the learner's memory"),
        (_env("worker", MOODWIRE_INDEX_DIR="/srv/index"), "worker: the index snapshots"),
        (_drop_volume("dashboard", "/var/lib/moodwire/registry"), "dashboard: the registry"),
        # The dashboard's meaning search not seeing the workers' index snapshots.
        (_drop_volume("dashboard", "/var/lib/moodwire/index"), "index is not one shared volume"),
        # A SQLite store in the container.
        (_env("worker", MOODWIRE_STORE_URL=None), "worker: the SQLite store"),
        # The bootstrap seeding a learner state no learner reads.
        (_drop_volume("bootstrap", "/var/lib/moodwire/learner"), "bootstrap: the learner's"),
        (
            lambda c: c["services"]["bootstrap"]["volumes"].__setitem__(
                1, "other-state:/var/lib/moodwire/learner"
            ),
            "learner state is not one shared volume",
        ),
        (
            lambda c: c["services"]["learner"]["volumes"].__setitem__(
                0, "registry:/var/lib/moodwire/registry:ro"
            ),
            "learner: the registry (versions, lock) /var/lib/moodwire/registry is on no writable",
        ),
        (_set("learner", "command", ["learn"]), "learner: command ['learn'] is not one"),
    ],
)
def test_a_path_written_off_a_volume_is_caught(
    tmp_path: Path, change: Callable[[dict[str, Any]], None], expected: str
) -> None:
    problems = problems_with_written_paths(_plant(tmp_path, change))
    assert any(p.startswith(expected) for p in problems), problems


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (["wroker"], "worker: `moodwire wroker` is not a valid command"),
        (["worker", "--batch", "x"], "worker: `moodwire worker --batch x`"),
        (["bootstrap"], "worker: `moodwire bootstrap`"),  # --train is required
    ],
)
def test_a_command_the_cli_does_not_have_is_caught(
    tmp_path: Path, command: list[str], expected: str
) -> None:
    problems = problems_with_commands(_plant(tmp_path, _set("worker", "command", command)))
    assert any(p.startswith(expected) for p in problems), problems


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (_env("worker", MOODWIRE_BATCHSIZE="8"), "worker: MOODWIRE_BATCHSIZE is not a setting"),
        (
            _env("learner", MOODWIRE_LEARNER__REQUIRE_APROVAL="true"),
            "learner: MOODWIRE_LEARNER__REQUIRE_APROVAL is not a setting",
        ),
        (_env("worker", MOODWIRE_BATCH_SIZE="lots"), "worker: its environment is not valid"),
    ],
)
def test_an_unknown_or_invalid_variable_is_caught(
    tmp_path: Path, change: Callable[[dict[str, Any]], None], expected: str
) -> None:
    problems = problems_with_variables(_plant(tmp_path, change))
    assert any(p.startswith(expected) for p in problems), problems


def _probe_on(service: str, url: str) -> Callable[[dict[str, Any]], None]:
    def change(compose: dict[str, Any]) -> None:
        test = compose["services"][service]["healthcheck"]["test"]
        test[-1] = re.sub(r"http://[^'\"]+", url, test[-1])

    return change


def _no_wait(service: str, dep: str) -> Callable[[dict[str, Any]], None]:
    def change(compose: dict[str, Any]) -> None:
        compose["services"][service]["depends_on"][dep] = {"condition": "service_started"}

    return change


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda c: c["services"]["learner"].pop("healthcheck"), "learner: healthcheck None"),
        (_probe_on("worker", "http://127.0.0.1:9400/metrics"), "worker: healthcheck http"),
        (_probe_on("worker", "http://127.0.0.1:9401/readyz"), "worker: healthcheck http"),
        (_env("learner", MOODWIRE_METRICS_PORT=None), "learner: no MOODWIRE_METRICS_PORT"),
        (_env("worker", MOODWIRE_METRICS_HOST="10.1.2.3"), "worker: metrics on 10.1.2.3"),
        (
            lambda c: c["services"]["worker"]["healthcheck"]["test"].__setitem__(1, "curl"),
            "worker: healthcheck runs ['curl']",
        ),
        (_no_wait("learner", "kafka"), "learner: does not wait for kafka"),
        (lambda c: c["services"].pop("learner"), "no service runs `moodwire learner`"),
    ],
)
def test_a_missing_or_wrong_healthcheck_is_caught(
    tmp_path: Path, change: Callable[[dict[str, Any]], None], expected: str
) -> None:
    problems = problems_with_health(_plant(tmp_path, change))
    assert any(p.startswith(expected) for p in problems), problems


def test_a_learner_without_approval_is_caught(tmp_path: Path) -> None:
    path = _plant(tmp_path, _env("learner", MOODWIRE_LEARNER__REQUIRE_APPROVAL=None))
    assert problems_with_approval(path) == [
        "learner: the learner promotes without an operator's approval"
    ]


def test_root_in_the_image_or_in_compose_is_caught(tmp_path: Path) -> None:
    text = DOCKERFILE.read_text()
    cut = text.rsplit("USER 10001:10001", 1)
    rootful = tmp_path / "Dockerfile"
    rootful.write_text("USER root".join(cut))
    assert problems_with_users(COMPOSE, rootful) == ["Dockerfile stage cpu runs as root (root)"]
    rootful.write_text(text.replace("USER 10001:10001\n", "", 1))  # the cuda stage's
    assert problems_with_users(COMPOSE, rootful) == ["Dockerfile stage cuda runs as root (None)"]
    compose = _plant(tmp_path, _set("worker", "user", "0:0"))
    assert problems_with_users(compose, DOCKERFILE) == ["worker: compose runs it as root"]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (_env("kafka", KAFKA_LOG_DIRS=None), "kafka: no KAFKA_LOG_DIRS"),
        (_env("kafka", KAFKA_LOG_DIRS="/tmp/kraft-combined-logs"), "kafka: Kafka's log /tmp/"),
        (_drop_volume("kafka", "/var/lib/kafka/data"), "kafka: Kafka's log /var/lib/kafka/data"),
        (_env("kafka", CLUSTER_ID=None), "kafka: no CLUSTER_ID"),
    ],
)
def test_kafka_writing_off_its_volume_is_caught(
    tmp_path: Path, change: Callable[[dict[str, Any]], None], expected: str
) -> None:
    problems = problems_with_kafka_log(_plant(tmp_path, change))
    assert any(p.startswith(expected) for p in problems), problems


def _faiss_plant(
    tmp_path: Path,
    pyproject: str | None = None,
    dockerfile: str | None = None,
    setup: str | None = None,
) -> list[str]:
    files = {}
    for name, src, text in (
        ("pyproject.toml", PYPROJECT, pyproject),
        ("Dockerfile", DOCKERFILE, dockerfile),
        ("setup.sh", SETUP, setup),
    ):
        files[name] = tmp_path / name
        files[name].write_text(text if text is not None else src.read_text())
    return problems_with_faiss(files["pyproject.toml"], files["Dockerfile"], files["setup.sh"])


def test_an_install_with_both_faiss_builds_or_neither_is_caught(tmp_path: Path) -> None:
    py, dock, setup = PYPROJECT.read_text(), DOCKERFILE.read_text(), SETUP.read_text()
    # faiss-cpu back in the base dependencies: the gpu extra installs both.
    both = py.replace("dependencies = [\n", 'dependencies = [\n  "faiss-cpu>=1.8",\n', 1)
    problems = _faiss_plant(tmp_path, pyproject=both)
    assert any(p.startswith("the base dependencies install ['faiss-cpu']") for p in problems)
    assert any("Dockerfile build-cuda installs" in p for p in problems), problems
    # dev pulling in cpu: setup.sh's .[cpu,dev] is fine, but .[gpu,dev] would install both.
    dev_cpu = py.replace(
        '"moodwire[broker,bench,postgres]"', '"moodwire[cpu,broker,bench,postgres]"'
    )
    gpu_dev = dock.replace('"/src[gpu,postgres]"', '"/src[gpu,dev]"')
    problems = _faiss_plant(tmp_path, pyproject=dev_cpu, dockerfile=gpu_dev)
    assert "Dockerfile build-cuda installs .[dev,gpu]: ['faiss-cpu', 'faiss-gpu-cu12']" in problems
    # setup.sh forgetting the cpu extra: no faiss at all.
    problems = _faiss_plant(tmp_path, setup=setup.replace('".[cpu,dev]"', '".[dev]"'))
    assert any(re.match(r"setup\.sh:\d+ installs \.\[dev\]: \[\]", p) for p in problems), problems
    # The old layout: faiss-cpu in the base, a gpu extra beside it, no cpu extra.
    old = py.replace('cpu = ["faiss-cpu>=1.8"]\n', "").replace(
        "dependencies = [\n", 'dependencies = [\n  "faiss-cpu>=1.8",\n', 1
    )
    problems = _faiss_plant(tmp_path, pyproject=old)
    assert "no extra ['cpu']: FAISS's builds are extras cpu and gpu" in problems, problems
    # An extra with two builds.
    two = py.replace('gpu = ["faiss-gpu-cu12>=1.8"]', 'gpu = ["faiss-gpu-cu12>=1.8", "faiss-cpu"]')
    problems = _faiss_plant(tmp_path, pyproject=two)
    assert "extra gpu installs ['faiss-cpu', 'faiss-gpu-cu12']: two `faiss` modules" in problems

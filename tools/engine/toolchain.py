"""Makes the Pulumi engine that this project's Python packages pin available in .toolchain/bin.

The versions come from the installed wheels (the `pulumi` SDK, and each provider
wheel's pulumi-plugin.json), never from a second hard-coded list. A binary already
on PATH at the right version is used as it is; anything else is built once from
its Go module into a cache outside the repository, keyed by name and version, so
a fresh clone (CI) links what an earlier clone built instead of rebuilding it.

Run through tools/toolchain, in the program environment (.venv-program) whose wheels it reads.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
BIN = REPO / ".toolchain" / "bin"
CACHE = Path(os.environ.get("FLOWERBED_CACHE", Path.home() / ".cache" / "flowerbed")) / "toolchain"
# Shared by every clone: only the plugin cache and per-project workspace settings live here.
PULUMI_HOME = CACHE / "pulumi-home"

CLI_MODULE = "github.com/pulumi/pulumi/pkg/v3"
SDK_MODULE = "github.com/pulumi/pulumi/sdk/v3"
CLI_VERSION_VAR = "github.com/pulumi/pulumi/sdk/v3/go/common/version.Version"
# What the engine looks for next to the `pulumi` executable (its "bundled" plugins) for Python programs.
BUNDLED = ("pulumi-language-python", "pulumi-language-python-exec", "pulumi-resource-pulumi-python")


@dataclass(frozen=True)
class ProviderSource:
    """Where a provider plugin's Go code comes from.

    The provider modules carry no tags of their own, so they are fetched at a
    pseudo-version. The module proxy reachable here only serves pseudo-versions
    that someone has fetched before; for kubernetes the nearest one it serves
    to the requested release is recorded here (see `note`).
    """

    module: str
    pseudo_version: str
    command_dir: str  # the provider's `cmd/pulumi-resource-<name>` inside the module
    version_var: str
    note: str


PROVIDER_SOURCES: dict[str, ProviderSource] = {
    "kubernetes": ProviderSource(
        module="github.com/pulumi/pulumi-kubernetes/provider/v4",
        pseudo_version="v4.0.0-20260115033456-f47bc2d6f199",
        command_dir="cmd/pulumi-resource-kubernetes",
        version_var="github.com/pulumi/pulumi-kubernetes/provider/v4/pkg/version.Version",
        note=(
            "main-branch commit of 2026-01-15, the day before the v4.25.0 tag: the module proxy here refuses "
            "the pseudo-versions of release commits (v4.30.0's, dd7f832c5e2b, answers 403), so this is the "
            "newest source it serves; requirements.in pins the SDK to 4.25.0 to match it."
        ),
    ),
}

# The checksum database reachable here answers 404 for several of Pulumi's own module versions
# (the proxy still serves them); go.sum in the wrapper still pins what was downloaded.
GONOSUMDB = "github.com/pulumi"


@dataclass(frozen=True)
class Versions:
    cli: str  # without the leading "v"
    plugins: dict[str, str]  # resource plugin name -> version


def wanted_versions() -> Versions:
    """Reads the CLI version from the `pulumi` SDK and plugin versions from each wheel's pulumi-plugin.json."""
    plugins: dict[str, str] = {}
    for dist in metadata.distributions():
        for file in dist.files or ():
            if file.name != "pulumi-plugin.json":
                continue
            spec = json.loads(Path(dist.locate_file(file)).read_text())
            if spec.get("resource"):
                plugins[spec["name"]] = spec["version"]
    return Versions(cli=metadata.version("pulumi"), plugins=plugins)


def log(message: str) -> None:
    print(f"toolchain: {message}", flush=True)


def run(cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=env, text=True, capture_output=True)
    if result.returncode != 0:
        sys.stderr.write(result.stdout + result.stderr)
        raise SystemExit(f"toolchain: failed ({result.returncode}): {' '.join(cmd)}")
    return result.stdout


def go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(CGO_ENABLED="0", GOFLAGS="-modcacherw -mod=mod", GONOSUMDB=GONOSUMDB)
    env.setdefault("GOTOOLCHAIN", "auto")
    return env


def go_download(module: str, version: str) -> dict:
    """Fetches a module through the proxy; returns `go mod download -json` (Dir, GoMod, ...)."""
    if shutil.which("go") is None:
        raise SystemExit(f"toolchain: building {module} needs Go (1.25 or newer) on PATH")
    out = subprocess.run(
        ["go", "mod", "download", "-json", f"{module}@{version}"],
        env=go_env(),
        text=True,
        capture_output=True,
        cwd=CACHE,
    )
    info = json.loads(out.stdout) if out.stdout.strip() else {}
    if out.returncode != 0 or "Error" in info:
        raise SystemExit(f"toolchain: cannot fetch {module}@{version}: {info.get('Error') or out.stderr.strip()}")
    return info


def non_local_replaces(go_mod: str) -> list[str]:
    """The `replace` directives of a go.mod that point at another module version (local ones can't travel)."""
    lines: list[str] = []
    in_block = False
    for raw in go_mod.splitlines():
        line = raw.split("//")[0].strip()
        if line == "replace (":
            in_block = True
            continue
        if in_block and line == ")":
            in_block = False
            continue
        body = line if in_block else (line[len("replace ") :] if line.startswith("replace ") else "")
        if "=>" in body and not body.split("=>")[1].strip().startswith((".", "/")):
            lines.append(body)
    return lines


def required_version(go_mod: str, module: str) -> str:
    match = re.search(rf"^\s*(?:require\s+)?{re.escape(module)} (v\S+)", go_mod, re.MULTILINE)
    if not match:
        raise SystemExit(f"toolchain: {module} is not required by the upstream go.mod")
    return match.group(1)


def write_wrapper(work: Path, name: str, requires: dict[str, str], replaces: list[str]) -> None:
    """A throwaway main module: upstream modules with `replace` directives refuse `go install mod@ver`."""
    work.mkdir(parents=True, exist_ok=True)
    lines = [f"module flowerbed.local/toolchain/{name}", "", "go 1.25", ""]
    lines += [f"require {mod} {ver}" for mod, ver in requires.items()]
    lines += [""] + [f"replace {r}" for r in replaces]
    (work / "go.mod").write_text("\n".join(lines) + "\n")


def go_build(work: Path, package: str, output: Path, ldflags: str) -> None:
    run(["go", "mod", "tidy"], cwd=work, env=go_env())
    run(
        ["go", "build", "-trimpath", "-tags", "osusergo,grpcnotrace", "-ldflags", ldflags, "-o", str(output), package],
        cwd=work,
        env=go_env(),
    )


@contextmanager
def cache_entry(name: str, version: str) -> Iterator[tuple[Path, bool]]:
    """Yields (dir, needs_build). A finished entry carries `.complete`; a half-built one is wiped first."""
    entry = CACHE / f"{name}-{version}"
    done = entry / ".complete"
    if done.exists():
        yield entry, False
        return
    shutil.rmtree(entry, ignore_errors=True)
    entry.mkdir(parents=True)
    started = time.monotonic()
    yield entry, True
    seconds = time.monotonic() - started
    (entry / "build-seconds").write_text(f"{seconds:.0f}\n")
    done.touch()
    log(f"built {name} {version} in {seconds:.0f}s")


def on_path(name: str, version_args: list[str], expected: str) -> Path | None:
    """A binary already installed (e.g. the official CLI) at exactly the expected version."""
    search = os.pathsep.join(d for d in os.environ.get("PATH", "").split(os.pathsep) if Path(d) != BIN)
    found = shutil.which(name, path=search)
    if not found:
        return None
    probe = subprocess.run([found, *version_args], text=True, capture_output=True)
    return Path(found) if probe.returncode == 0 and probe.stdout.strip() == expected else None


def installed_plugin(name: str, version: str) -> Path | None:
    """A provider the official CLI already downloaded into the user's own plugin cache."""
    home = Path(os.environ.get("PULUMI_HOME", Path.home() / ".pulumi"))
    binary = home / "plugins" / f"resource-{name}-v{version}" / f"pulumi-resource-{name}"
    return binary if binary.exists() and home != PULUMI_HOME else None


def official_cli(version: str) -> Path | None:
    """The directory of an installed official CLI at this version, which bundles the Python language host."""
    installed = on_path("pulumi", ["version"], f"v{version}")
    if installed is None:
        return None
    directory = installed.resolve().parent
    return directory if all((directory / name).exists() for name in BUNDLED) else None


def cli(version: str) -> Path:
    """The `pulumi` binary built from pkg/v3 (once per version)."""
    with cache_entry("pulumi", version) as (entry, build):
        if build:
            log(f"building pulumi v{version} from {CLI_MODULE} (first time only; several minutes cold)")
            upstream = go_download(CLI_MODULE, f"v{version}")
            work = entry / "src"
            write_wrapper(
                work,
                "pulumi",
                {CLI_MODULE: f"v{version}", SDK_MODULE: f"v{version}"},
                non_local_replaces(Path(upstream["GoMod"]).read_text()),
            )
            (work / "tools.go").write_text(
                '//go:build tools\n\npackage tools\n\nimport _ "github.com/pulumi/pulumi/pkg/v3/cmd/pulumi"\n'
            )
            go_build(work, f"{CLI_MODULE}/cmd/pulumi", entry / "pulumi", f"-X {CLI_VERSION_VAR}=v{version}")
            shutil.rmtree(work)
    return entry


def python_scripts(version: str) -> Path:
    """The Python runtime's scripts (program runner, dynamic-provider host) from the SDK module of the same version."""
    with cache_entry("python-scripts", version) as (entry, build):
        if build:
            sdk = Path(go_download(SDK_MODULE, f"v{version}")["Dir"]) / "python"
            for script in ("cmd/pulumi-language-python-exec", "dist/pulumi-resource-pulumi-python"):
                target = entry / Path(script).name
                shutil.copyfile(sdk / script, target)
                target.chmod(0o755)
    return entry


def provider(name: str, version: str) -> Path | None:
    """A resource plugin: the user's installed one, else built from its Go module; None when neither exists."""
    installed = installed_plugin(name, version)
    if installed:
        log(f"using installed {installed}")
        return installed
    source = PROVIDER_SOURCES.get(name)
    if source is None:
        return None
    with cache_entry(f"pulumi-resource-{name}", version) as (entry, build):
        if build:
            log(f"building pulumi-resource-{name} {version} from {source.module}@{source.pseudo_version} "
                "(first time only; several minutes cold)")
            log(f"  note: {source.note}")
            upstream = go_download(source.module, source.pseudo_version)
            go_mod = Path(upstream["GoMod"]).read_text()
            requires = {source.module: source.pseudo_version}
            # Local replaces (the provider's own Go SDK at ../sdk) become the version its go.mod requires.
            for local in re.findall(r"^replace (\S+) => \.\./\S+$", go_mod, re.MULTILINE):
                requires[local] = required_version(go_mod, local)
            work = entry / "src"
            write_wrapper(work, f"pulumi-resource-{name}", requires, non_local_replaces(go_mod))
            command = Path(upstream["Dir"]) / source.command_dir
            for file in command.iterdir():
                if file.suffix in (".go", ".json") and file.name != "generate.go":
                    shutil.copyfile(file, work / file.name)
                    (work / file.name).chmod(0o644)
            embed_generated_files(work, version)
            go_build(work, ".", entry / f"pulumi-resource-{name}", f"-X {source.version_var}={version}")
            (entry / "SOURCE").write_text(f"{source.module}@{source.pseudo_version}\n{source.note}\n")
            shutil.rmtree(work)
    return entry / f"pulumi-resource-{name}"


def embed_generated_files(work: Path, version: str) -> None:
    """What the provider's `go generate` (generate.go) writes: the schema stamped with the version, compacted."""
    schema = json.loads((work / "schema.json").read_text())
    schema["version"] = version
    (work / "schema-embed.json").write_text(json.dumps(schema, separators=(",", ":")))
    mapping = work / "terraform-mapping.json"
    if mapping.exists():
        (work / "terraform-mapping-embed.json").write_text(
            json.dumps(json.loads(mapping.read_text()), separators=(",", ":"))
        )


def link(target: Path, name: str) -> None:
    dest = BIN / name
    if dest.is_symlink() or dest.exists():
        dest.unlink()
    dest.symlink_to(target)


def place_cli(cli_dir: Path) -> None:
    """`pulumi` looks for its bundled plugins (language hosts) next to its resolved executable,

    so the CLI is hard-linked (or copied) into .toolchain/bin rather than symlinked: then the
    language host beside it counts as bundled, and nothing warns about plugins found on $PATH.
    """
    dest = BIN / "pulumi"
    source = cli_dir / "pulumi"
    if dest.exists() and dest.stat().st_ino == source.stat().st_ino:
        return
    if dest.exists() or dest.is_symlink():
        dest.unlink()
    try:
        os.link(source, dest)
    except OSError:
        shutil.copy2(source, dest)


def install_plugin(pulumi: Path, name: str, version: str, binary: Path) -> None:
    """Registers a built provider in the shared PULUMI_HOME plugin cache, offline (`--file`)."""
    installed = PULUMI_HOME / "plugins" / f"resource-{name}-v{version}" / f"pulumi-resource-{name}"
    if installed.exists() and installed.stat().st_size == binary.stat().st_size:
        return
    env = dict(os.environ, PULUMI_HOME=str(PULUMI_HOME), PULUMI_SKIP_UPDATE_CHECK="true")
    run([str(pulumi), "plugin", "install", "resource", name, version, "--file", str(binary), "--reinstall"], env=env)


def place_bundled(version: str) -> None:
    """The CLI and what it expects beside itself: the Python language host, its runner, the dynamic-provider host."""
    official = official_cli(version)
    if official:
        log(f"using the installed CLI in {official} (v{version})")
        for name in ("pulumi", *BUNDLED):
            link(official / name, name)
        return
    place_cli(cli(version))
    link(HERE / "pulumi-language-python", "pulumi-language-python")
    scripts = python_scripts(version)
    for name in ("pulumi-language-python-exec", "pulumi-resource-pulumi-python"):
        link(scripts / name, name)


def main() -> None:
    versions = wanted_versions()
    CACHE.mkdir(parents=True, exist_ok=True)
    BIN.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two clones building the same entry at once would corrupt it
        place_bundled(versions.cli)
        for name, version in sorted(versions.plugins.items()):
            binary = provider(name, version)
            if binary is None:
                log(
                    f"pulumi-resource-{name} {version}: NOT available: no source for it is known that the module "
                    f"proxy here serves (see PROVIDER_SOURCES); programs using pulumi_{name} cannot run here"
                )
                continue
            link(binary, binary.name)
            install_plugin(BIN / "pulumi", name, version, binary)
    log(f"ready in {BIN.relative_to(REPO)}: pulumi v{versions.cli}, plugins {versions.plugins}")


if __name__ == "__main__":
    main()

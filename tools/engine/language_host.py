"""A Pulumi language host for Python programs, used where the official one cannot be built.

Why this exists: the official `pulumi-language-python` is a Go module of its own
(github.com/pulumi/pulumi/sdk/python/cmd/pulumi-language-python/v3) and the Go
module proxy reachable from this project's machines refuses it (HTTP 403 for
every version tried, including pseudo-versions that other projects pin), so `make toolchain` cannot build it. A user with the official CLI
installed gets the official host (tools/toolchain prefers it).

What it does is what the official host does for `preview`/`up`/`destroy`: it
serves the engine's LanguageRuntime gRPC service (stubs from the installed
`pulumi` SDK) and runs the program with the SDK's own runner script,
`pulumi-language-python-exec` (copied beside this host by tools/toolchain from
the SDK module of the CLI's version), in the project's virtualenv. Code
generation, packing and dependency installation are not offered (the
virtualenv is built by tools/ensure-venv); the engine answers "unimplemented"
for those.

The engine starts it as `pulumi-language-python <engine address>` and reads the
port it listens on from the first line of stdout.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from concurrent import futures
from importlib import metadata
from pathlib import Path
from threading import Event

import grpc
from google.protobuf import json_format
from pulumi.runtime._grpc_settings import _GRPC_CHANNEL_OPTIONS
from pulumi.runtime.proto import language_pb2, language_pb2_grpc, plugin_pb2

# Exit code of pulumi-language-python-exec after it has shown the user an actionable message
# (an unhandled exception with the user's stack trace): the engine must not add another error.
BAIL_EXIT_CODE = 32


def program_python(info: language_pb2.ProgramInfo) -> str:
    """The interpreter the official host would pick: Pulumi.yaml's `virtualenv`, else PULUMI_PYTHON_CMD, else python3."""
    options = json_format.MessageToDict(info.options) if info.HasField("options") else {}
    virtualenv = options.get("virtualenv")
    if virtualenv:
        venv = Path(info.root_directory, virtualenv)
        python = venv / "bin" / "python"
        if not python.exists():
            raise RuntimeError(f"the 'virtualenv' option in Pulumi.yaml is {virtualenv!r}, but {python} does not exist")
        return str(python)
    return os.environ.get("PULUMI_PYTHON_CMD", "python3")


class PythonLanguageHost(language_pb2_grpc.LanguageRuntimeServicer):
    def __init__(self, engine_address: str, runner: Path) -> None:
        self.engine_address = engine_address
        self.runner = runner

    def GetPluginInfo(self, request, context):
        return plugin_pb2.PluginInfo(version=metadata.version("pulumi"))

    def GetRequiredPlugins(self, request, context):
        return language_pb2.GetRequiredPluginsResponse()

    def GetRequiredPackages(self, request, context):
        # No up-front list: the engine loads each provider when the program registers it, at the version
        # the provider's SDK asks for (as it does for Automation API inline programs). Listing every
        # provider wheel in the virtualenv would make an unused one a hard requirement.
        return language_pb2.GetRequiredPackagesResponse()

    def InstallDependencies(self, request, context):
        return iter(())  # the virtualenv is managed by tools/ensure-venv

    def About(self, request, context):
        python = program_python(request.info)
        version = subprocess.run([python, "--version"], text=True, capture_output=True).stdout.split()[-1]
        return language_pb2.AboutResponse(executable=python, version=version)

    def GetProgramDependencies(self, request, context):
        python = program_python(request.info)
        listing = subprocess.run(
            [python, "-c", "import json, importlib.metadata as m; "
             "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))"],
            text=True,
            capture_output=True,
            check=True,
        ).stdout
        return language_pb2.GetProgramDependenciesResponse(
            dependencies=[language_pb2.DependencyInfo(name=n, version=v) for n, v in sorted(json.loads(listing).items())]
        )

    def Run(self, request, context):
        try:
            python = program_python(request.info)
        except RuntimeError as exc:
            return language_pb2.RunResponse(error=str(exc))
        program = os.path.join(request.info.program_directory, request.info.entry_point or ".")
        args = [
            python,
            "-u",
            str(self.runner),
            f"--monitor={request.monitor_address}",
            f"--engine={self.engine_address}",
            f"--project={request.project}",
            f"--root_directory={request.info.root_directory}",
            f"--stack={request.stack}",
            f"--pwd={request.pwd}",
            f"--dry_run={'true' if request.dryRun else 'false'}",
            f"--parallel={request.parallel}",
            f"--organization={request.organization}",
            program,
            *request.args,
        ]
        env = dict(
            os.environ,
            PULUMI_CONFIG=json.dumps(dict(request.config)),
            PULUMI_CONFIG_SECRET_KEYS=json.dumps(list(request.configSecretKeys)),
        )
        # stdout/stderr go straight to the engine, which shows them as the program's output.
        code = subprocess.run(args, env=env, cwd=request.pwd or None).returncode
        if code == 0:
            return language_pb2.RunResponse()
        if code == BAIL_EXIT_CODE:
            return language_pb2.RunResponse(bail=True)
        return language_pb2.RunResponse(error=f"Program exited with non-zero exit code: {code}")


def main() -> None:
    # The engine stops its plugins with SIGINT. A process started from a background job (`cmd &` in a
    # script, as tools/test-suites runs pytest) inherits SIGINT ignored, and Python then raises no
    # KeyboardInterrupt: take the signal back.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    engine_address = sys.argv[-1]
    # The launcher points at the runner script installed beside it in .toolchain/bin.
    runner = Path(os.environ["PULUMI_LANGUAGE_PYTHON_EXEC"])
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=_GRPC_CHANNEL_OPTIONS)
    language_pb2_grpc.add_LanguageRuntimeServicer_to_server(PythonLanguageHost(engine_address, runner), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    try:
        Event().wait()
    except KeyboardInterrupt:  # the engine stops its plugins with SIGINT once the deployment is done
        server.stop(0)


if __name__ == "__main__":
    main()

"""make consortium: a coordinator and two hospitals, each deploying its own stack, with only public files between them.

    python -m tools.engine.consortium [--workdir DIR]

The stacks of examples/consortium/ (render mode), each in a project copy of its own under
out/consortium/<party>/ with a file backend of its own (three organisations, three states):

1. the hub's first `up`: the server and the federation CA, admitting nobody; it writes its join
   bundle (federation, endpoint, CA certificate);
2. each hospital gets that file and runs `up` of its site stack: its SuperNode key pair and Runtime
   API CA are made in its own state; it writes its join request (name, SuperNode public key);
3. the coordinator commits both join requests into the hub's sites/, previews (the diff shows what
   admitting them adds) and runs `up`: the registration Job now registers exactly those two keys;
4. every state is decrypted (`pulumi stack export --show-secrets`) and the private keys in each are
   listed: each key is in the state of the party that uses it, and in no other.
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import re
import shutil
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tools.engine.offline import REPO, Pulumi, ToolchainMissing, check_toolchain, copy_program
from tools.engine.stack import human_diff, parse_urn, shown, up
from tools.engine.stack import state as deployment

EXAMPLE = REPO / "examples" / "consortium"
HUB = "hub"
HOSPITALS = ("hospital-a", "hospital-b")
MEMBERS_DIR = "sites"  # the hub's flowerbed:members
BUNDLE_FILE = "join-bundle.yaml"  # each site stack's flowerbed:bundle.file
_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4}){6,}(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
_PRIVATE_KEY = re.compile(r"-----BEGIN ([A-Z ]*)PRIVATE KEY-----.*?-----END \1PRIVATE KEY-----\n?", re.DOTALL)
# How `pulumi stack export --show-secrets` marks a secret value (its plaintext is JSON text).
_SECRET_SIGNATURE = "4dabf18193072939515e22adb298388d"


@dataclass(frozen=True)
class Party:
    """One organisation: its project copy, its stack, its own file backend under `root`."""

    name: str
    root: Path

    @property
    def pulumi(self) -> Pulumi:
        return Pulumi(self.root, self.name)

    @property
    def out(self) -> Path:
        return self.root / "out" / self.name

    def state(self) -> dict[str, Any]:
        """The stack's deployment with every secret decrypted."""
        return deployment(self.pulumi, secrets=True)


def party(workdir: Path, name: str, prepare: Callable[[Party], None] | None = None) -> Party:
    member = Party(name, copy_program(workdir / name, [EXAMPLE / f"Pulumi.{name}.yaml"]))
    member.pulumi.select_or_init()
    if prepare is not None:
        prepare(member)
    return member


def say(text: str) -> None:
    print(f"\n=== {text}", flush=True)


# --- what each state holds -----------------------------------------------------------------


def _revealed(value: Any) -> Iterator[str]:
    """Every string in a state value, secrets decrypted by the export included, and what a base64 string
    decodes to (the kubernetes provider keeps a Secret's `stringData` base64-encoded as its `data`)."""
    if isinstance(value, str):
        yield value
        if _BASE64.fullmatch(value):
            try:
                yield base64.b64decode(value, validate=True).decode()
            except (ValueError, UnicodeDecodeError):
                pass
    elif isinstance(value, Mapping):
        if value.get(_SECRET_SIGNATURE) is not None and "plaintext" in value:
            yield from _revealed(json.loads(value["plaintext"]))
        else:
            for item in value.values():
                yield from _revealed(item)
    elif isinstance(value, list):
        for item in value:
            yield from _revealed(item)


def resource_strings(resource: Mapping[str, Any]) -> list[str]:
    return [*_revealed(resource.get("inputs") or {}), *_revealed(resource.get("outputs") or {})]


@dataclass
class PrivateKey:
    """One private key found in a state: what made it (a flowerbed PKI resource) and every resource holding it."""

    made_by: str  # e.g. 'CA "flowerbed consortium federation CA"', 'SuperNode key of hospital-a'
    holders: list[str] = field(default_factory=list)


def _made_by(resource: Mapping[str, Any]) -> str | None:
    kind = resource["type"].rsplit(":", 1)[-1]
    outputs = dict(resource.get("outputs") or {})
    if kind == "CertificateAuthority":
        return f'CA "{outputs.get("common_name")}"'
    if kind == "ServerCertificate":
        return f"TLS key of {(outputs.get('dns_names') or ['?'])[0]}"
    if kind == "SupernodeKey":
        return f"SuperNode key of {outputs.get('site')}"
    return None


def private_keys(state: Mapping[str, Any]) -> dict[str, PrivateKey]:
    """Every private key (PEM or OpenSSH) in a decrypted state, by its text."""
    found: dict[str, PrivateKey] = {}
    for resource in state.get("resources") or []:
        _, name = parse_urn(resource["urn"])
        kind = resource["type"].rsplit(":", 1)[-1]
        for text in resource_strings(resource):
            for match in _PRIVATE_KEY.finditer(text):
                key = found.setdefault(match.group(0).strip(), PrivateKey(made_by="?"))
                holder = f"{kind} {name}"
                if holder not in key.holders:
                    key.holders.append(holder)
        made_by = _made_by(resource)
        if made_by is not None:  # the key it issued (a certificate's inputs also carry its CA's key)
            outputs = resource.get("outputs") or {}
            for text in _revealed([outputs.get("key_pem"), outputs.get("private_openssh")]):
                found[_PRIVATE_KEY.search(text).group(0).strip()].made_by = made_by
    return found


def kubeconfig_servers(state: Mapping[str, Any]) -> list[str]:
    """The API servers of the kubeconfigs a state holds (its kubernetes providers'), one per provider."""
    servers = []
    for resource in state.get("resources") or []:
        if resource["type"] == "pulumi:providers:kubernetes":
            for text in _revealed((resource.get("inputs") or {}).get("kubeconfig") or []):
                servers += re.findall(r"server:\s*(\S+)", text)
    return servers


def audit(states: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """What each stack's state holds of the others'; one line per finding, [] when nothing crosses.

    A private key in two states (named by what made it, in whichever state made it); a SuperNode key
    in the hub's; a site's state naming another site.
    """
    keys = {name: private_keys(state) for name, state in states.items()}
    problems = []
    for name, other in itertools.combinations(sorted(states), 2):
        for text in keys[name].keys() & keys[other].keys():
            # The state that made the key says what made it; the other holds a copy ("?").
            made_by = max(keys[name][text].made_by, keys[other][text].made_by, key=lambda made: made != "?")
            problems.append(f"{name} and {other} both hold the private key made by {made_by}")
    problems += [f"{HUB} holds {key.made_by}" for key in keys.get(HUB, {}).values() if "SuperNode" in key.made_by]
    for name in sorted(set(states) - {HUB}):
        text = "\n".join(s for resource in states[name].get("resources") or [] for s in resource_strings(resource))
        problems += [f"{name}'s state names {other}" for other in sorted(set(states) - {HUB, name}) if other in text]
    return problems


def key_table(states: Mapping[str, Mapping[str, Any]]) -> list[str]:
    lines = ["Private keys in each stack's state (pulumi stack export --show-secrets):"]
    for name, state in states.items():
        lines.append(f"  {name}:")
        for key in sorted(private_keys(state).values(), key=lambda k: k.made_by):
            lines.append(f"    {key.made_by:<66} held by {', '.join(key.holders)}")
    return lines


# --- the example -------------------------------------------------------------------------------


@dataclass
class Consortium:
    hub: Party
    hospitals: dict[str, Party]
    admission_diff: list[str]  # the hub's preview of admitting both join requests
    states: dict[str, dict[str, Any]]  # each stack's decrypted state after the example

    def party(self, name: str) -> Party:
        return self.hub if name == HUB else self.hospitals[name]


def commit_join_requests(hub: Party, hospital: Party) -> list[Path]:
    """What the coordinator's pull request does: the hospital's join files into the hub's members directory."""
    committed = []
    for request in sorted((hospital.out / "join").glob("*.yaml")):
        committed.append(Path(shutil.copy2(request, hub.root / MEMBERS_DIR / request.name)))
    return committed


def preview_diff(member: Party) -> list[str]:
    result = member.pulumi.run(["preview", "--json"], capture=True)
    return human_diff(json.loads(result.stdout))


def run(workdir: Path, prepare: Callable[[Party], None] | None = None) -> Consortium:
    """The example in `workdir` (emptied first); `prepare` is given each party before its first `up`
    (the live tests point its stack at a local control plane there)."""
    shutil.rmtree(workdir, ignore_errors=True)
    hub = party(workdir, HUB, prepare)
    (hub.root / MEMBERS_DIR).mkdir()
    say(f"{HUB}: first up (the server and the federation CA; {MEMBERS_DIR}/ is empty, nobody is admitted)")
    up(hub.pulumi, hub.out)
    hospitals = {}
    for name in HOSPITALS:
        hospitals[name] = hospital = party(workdir, name, prepare)
        shutil.copy2(hub.out / BUNDLE_FILE, hospital.root / BUNDLE_FILE)
        say(f"{name}: up of its own site stack, trusting the federation by the hub's {BUNDLE_FILE}")
        up(hospital.pulumi, hospital.out)
        for path in commit_join_requests(hub, hospital):
            print(f"coordinator: committed {shown(path)}")
    say(f"{HUB}: preview of admitting {', '.join(HOSPITALS)} (what the pull request adds)")
    admission = preview_diff(hub)
    print("\n".join(admission))
    say(f"{HUB}: up (the registration Job registers exactly the admitted keys)")
    up(hub.pulumi, hub.out)
    consortium = Consortium(hub, hospitals, admission, {name: member.state() for name, member in
                                                        [(HUB, hub), *hospitals.items()]})
    say("who holds which private key")
    print("\n".join(key_table(consortium.states)))
    problems = audit(consortium.states)
    print("\n".join(problems) if problems else
          "Each private key is in the state of the one party that uses it: the hub's holds no SuperNode key, "
          "no hospital's holds the federation CA's key or anything of the other hospital.")
    return consortium


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.engine.consortium", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=REPO / "out" / "consortium",
                        help="where the three parties' project copies go (default out/consortium; emptied first)")
    args = parser.parse_args(argv)
    try:
        check_toolchain()
    except ToolchainMissing as err:
        print(f"make consortium: {err}", file=sys.stderr)
        return 1
    return 1 if audit(run(args.workdir).states) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

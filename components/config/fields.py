"""The value types of the stack config: what each accepts (pydantic, strict: no "2" for 2, no 1 for
true) and how it says what it refused (components/config/wording.py)."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field

from components.config.wording import check_keys, expect, worded

# Kubernetes names; Rust's regex engine (pydantic's) has no look-ahead, so a DNS name's 253 is a max_length.
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
DNS_NAME = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$"
# A Kubernetes resource quantity as users write them ("500m", "2", "16Gi", "1.5").
QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|Pi|Ei|M|G|T|P|E)?$"
LABEL_KEY = r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"

Text = Annotated[str, Field(strict=True, min_length=1), expect("a non-empty string")]
String = Annotated[str, Field(strict=True), expect("a string")]
Boolean = Annotated[bool, Field(strict=True), expect("true or false")]


def not_a_dns_label(value: Any) -> str:
    return f"{value!r} is not a DNS label (lowercase a-z, 0-9, '-', max 63)"


DnsLabel = Annotated[str, Field(strict=True, pattern=DNS_LABEL), worded(not_a_dns_label)]
DnsName = Annotated[str, Field(strict=True, max_length=253, pattern=DNS_NAME),
                    worded(lambda value: f"{value!r} is not a DNS name (lowercase labels separated by '.', max 253)")]


def _number_as_text(value: Any) -> Any:
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


# Numbers are taken as their text (`cpu: 4` is "4"), which is how Kubernetes reads them too.
Quantity = Annotated[str, Field(strict=True, pattern=QUANTITY), BeforeValidator(_number_as_text),
                     expect("a Kubernetes quantity such as 500m, 2, 4Gi")]


def Integer(minimum: int, maximum: int | None = None) -> Any:  # noqa: N802 (a type, used as one)
    upper = f" and at most {maximum}" if maximum is not None else ""
    return Annotated[int, Field(strict=True, ge=minimum, le=maximum), expect(f"an integer of at least {minimum}{upper}")]


def Choice(*choices: str) -> Any:  # noqa: N802
    return Annotated[Literal[choices], expect(f"one of {', '.join(choices)}")]


def _network(text: str) -> str:
    ipaddress.ip_network(text)  # ValueError: not a network (host bits set, no such address)
    return text  # as written: it lands in NetworkPolicies as the user wrote it


def _address(text: str) -> str:
    ipaddress.ip_address(text)
    return text


Cidr = Annotated[str, Field(strict=True), AfterValidator(_network), expect("a CIDR such as 203.0.113.10/32")]
Cidrs = Annotated[tuple[Cidr, ...], Field(min_length=1), expect("a non-empty list of CIDRs such as 203.0.113.10/32")]
IpAddress = Annotated[str, Field(strict=True), AfterValidator(_address), expect("an IP address")]


def List(item: Any) -> Any:  # noqa: N802
    return Annotated[tuple[item, ...], expect("a list")]


_LabelKey = Annotated[str, Field(strict=True, pattern=LABEL_KEY), expect("keys that are Kubernetes label keys")]
_StringKey = Annotated[str, Field(strict=True), expect("keys that are Kubernetes label keys")]
# Annotations, contacts: any string keys; node selectors and pod labels: label keys.
StringMap = Annotated[dict[_StringKey, String], expect("a mapping of strings to strings")]
LabelMap = Annotated[dict[_LabelKey, String], expect("a mapping of strings to strings")]

# Passed to the executor as they are (Kubernetes checks their values); only their keys are checked here.
TOLERATION_KEYS = ("key", "operator", "value", "effect", "tolerationSeconds")
Toleration = Annotated[dict[str, Any], BeforeValidator(lambda value: check_keys(value, TOLERATION_KEYS))]

"""How a config that cannot work is said: one line, `<field>: <what is wrong>; expected <what is allowed>`.

pydantic finds what is wrong (types, bounds, choices, patterns, the models' own rules) and where
(`ValidationError` locations); this module words it the way `pulumi preview` shows it, naming the field
as a user writes it: `sites[2].gpus`, `clusters.hub.dns.cidrs[0]`, `sites/clinic-d.yaml.cluster` for an
entry read from a file. Three pieces:

- `expect` / `worded`: a field type's own wording of a value it refuses, whatever pydantic's reason
  (a wrong type, out of bounds, no match), while what its items refuse keeps theirs;
- `Invalid`: a rule of a model (a cross-field rule, a reference to another section), relative to where
  the model is validated, optionally one key further (`at`);
- `Section`: the base of every mapping of the config: frozen, unknown keys refused, camelCase keys,
  and the wording of its own structure (not a mapping, an unknown key, a missing one).

`one_line` turns the first of pydantic's errors into the `ConfigError` that callers see.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError, WrapValidator, model_validator
from pydantic.alias_generators import to_camel


class ConfigError(ValueError):
    """A stack configuration that cannot work; the message names the field and what is allowed.

    Raised inside a validator, it is taken as it is: it already names its field (a rule over several
    sections, or an entry of a file)."""


class Invalid(ValueError):
    """A value a rule refuses: `text` follows the field's name, `at` names a key (or `[index]`) below it."""

    def __init__(self, text: str, at: str = "") -> None:
        super().__init__(text)
        self.at = at


def refused(value: Any, allowed: str, at: str = "") -> Invalid:
    return Invalid(f"{value!r} is not allowed; expected {allowed}", at)


def worded(say: Callable[[Any], str]) -> WrapValidator:
    """Annotation: a value this type refuses is said as `say(value)`; the failures of its items (a list's
    entries, a mapping's keys and values) are located below it and keep their own wording."""

    def validate(value: Any, handler: Callable[[Any], Any]) -> Any:
        try:
            return handler(value)
        except ValidationError as err:
            if any(error["loc"] for error in err.errors(include_url=False)):
                raise
            raise Invalid(say(value)) from None

    return WrapValidator(validate)


def expect(allowed: str) -> WrapValidator:
    """Annotation: a refused value is said as `<value> is not allowed; expected <allowed>`."""
    return worded(lambda value: f"{value!r} is not allowed; expected {allowed}")


def check_keys(value: Any, keys: Sequence[str], required: Sequence[str] = ()) -> Mapping[str, Any]:
    """`value` as a mapping of these keys: the first unknown key (in sorted order) names every allowed one;
    a required key that is missing, null or empty is missing."""
    if not isinstance(value, Mapping):
        raise refused(value, f"a mapping with keys {', '.join(keys)}")
    unknown = sorted((key for key in value if key not in keys), key=str)
    if unknown:
        raise Invalid(f"unknown key; allowed keys are {', '.join(keys)}", at=str(unknown[0]))
    for key in required:
        if value.get(key) in (None, ""):
            raise Invalid("missing; it is required", at=key)
    return value


class Section(BaseModel):
    """A mapping of the stack config (or of a file it names), validated into a frozen object whose
    attributes are the keys in snake_case (`pullPolicy` -> `pull_policy`)."""

    model_config = ConfigDict(frozen=True, extra="forbid", alias_generator=to_camel, validate_by_name=False)

    @classmethod
    def config_keys(cls) -> list[str]:
        """The keys a user writes, in the order messages list them."""
        return [field.alias or name for name, field in cls.model_fields.items()]

    @classmethod
    def check_shape(cls, raw: Any) -> Mapping[str, Any]:
        """Before any value is validated: a mapping, of known keys, the required ones present."""
        required = [field.alias or name for name, field in cls.model_fields.items() if field.is_required()]
        return check_keys(raw, cls.config_keys(), required)

    @model_validator(mode="wrap")
    @classmethod
    def _shape_first(cls, raw: Any, handler: Callable[[Any], Any]) -> Any:
        if isinstance(raw, cls):
            return raw
        return handler(cls.check_shape(raw))


def validated(adapter: TypeAdapter[Any], value: Any, field: str) -> Any:
    """`value` as `adapter`'s type, checked outside a model (before one): a refusal names `field`."""
    try:
        return adapter.validate_python(value)
    except ValidationError as err:
        raise one_line(err, field) from None


def location(prefix: str, loc: Sequence[str | int], at: str = "") -> str:
    """`sites[2].studyData[0].mode` from a pydantic location (a mapping's key error adds `[key]`, left out)."""
    path = prefix
    for part in [*loc, *([at] if at else [])]:
        if part == "[key]":
            continue
        if isinstance(part, int):
            path += f"[{part}]"
        elif str(part).startswith("["):
            path += str(part)
        else:
            path += f".{part}" if path else str(part)
    return path


def one_line(err: ValidationError, prefix: str = "") -> ConfigError:
    """The first error pydantic found, as one line naming its field (`prefix`: where the value came from)."""
    first = err.errors(include_url=False)[0]
    error = first.get("ctx", {}).get("error")
    if isinstance(error, ConfigError):
        return error
    text = str(error) if isinstance(error, ValueError) else first["msg"]
    return ConfigError(f"{location(prefix, first['loc'], getattr(error, 'at', ''))}: {text}")

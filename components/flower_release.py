"""The Flower release this program is written for, and how an image reference says which one it runs.

The SuperLink, SuperNode and SuperExec flags (server.py, supernode.py, superexec.py), the Kubernetes
executor's config and the registration script are written for one Flower release, `FLOWER_RELEASE`
(requirements/requirements.lock pins the same flwr; a test holds the two together). `make images`
tags every image it builds `<TAG>-flwr<release>` (the cpu job variant `<TAG>-flwr<release>-cpu`;
tools/images/build.py) and labels it `org.flowerbed.flwr=<release>`, so the program learns an image's
release from the reference in the stack config, at preview, without pulling it.
"""

from __future__ import annotations

import re

FLOWER_RELEASE = "1.42.0"

# `-flwr<release>` ending the tag, optionally followed by one variant suffix (`-cpu`).
_RELEASE_IN_TAG = re.compile(r"-flwr(\d+\.\d+\.\d+(?:(?:a|b|rc)\d+)?)(?:-[a-z0-9]+)?$")


def tag_suffix(release: str) -> str:
    """What `make images` appends to its TAG: `-flwr<release>`."""
    return f"-flwr{release}"


def stand_in_image(source: str) -> str:
    """An image reference the config accepts where the real one is set later; `source` names where from."""
    return f"{source}:pending{tag_suffix(FLOWER_RELEASE)}"


def image_tag(image: str) -> str | None:
    """The tag of an image reference (`registry:5000/path/name:tag@sha256:...` -> `tag`); None without one."""
    name = image.split("@", 1)[0].rsplit("/", 1)[-1]
    return name.partition(":")[2] or None


def release_of(image: str) -> str | None:
    """The Flower release an image's tag names (`...:0.3.0-flwr1.42.0` -> `1.42.0`); None if it names none."""
    tag = image_tag(image)
    match = _RELEASE_IN_TAG.search(tag) if tag else None
    return match[1] if match else None

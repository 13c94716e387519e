"""components/flower_release.py: the program knows its Flower release and refuses images of another at preview."""

from __future__ import annotations

import copy
import re

import pytest

from component_harness import ROOT, dev_raw_config
from components.config import ConfigError, parse
from components.flower_release import FLOWER_RELEASE, image_tag, release_of

DIGEST = "@sha256:" + "0" * 64


def test_the_program_is_written_for_the_flower_the_images_install() -> None:
    lock = (ROOT / "requirements" / "requirements.lock").read_text()
    assert re.search(r"^flwr==(\S+)$", lock, re.MULTILINE)[1] == FLOWER_RELEASE


@pytest.mark.parametrize(("image", "tag", "release"), [
    ("registry.example.org/flowerbed/platform:0.1.0-flwr1.42.0", "0.1.0-flwr1.42.0", "1.42.0"),
    ("registry.example.org:5000/flowerbed/job:0.1.0-flwr1.42.0-cpu", "0.1.0-flwr1.42.0-cpu", "1.42.0"),
    (f"10.250.0.1:5000/flowerbed/job:i0123abcd-flwr1.41.0{DIGEST}", "i0123abcd-flwr1.41.0", "1.41.0"),
    ("r.example/f/job:v1-flwr1.43.0rc1", "v1-flwr1.43.0rc1", "1.43.0rc1"),
    ("registry.example.org:5000/flowerbed/job", None, None),  # a port is no tag
    (f"registry.example.org/flowerbed/job{DIGEST}", None, None),
    ("r.example/f/job:1.42.0", "1.42.0", None),  # a version alone does not say it is Flower's
    ("r.example/f/job:flwr1.42.0", "flwr1.42.0", None),
])
def test_an_image_reference_says_its_release_in_its_tag(image: str, tag: str | None, release: str | None) -> None:
    assert (image_tag(image), release_of(image)) == (tag, release)


def _images(**images: str) -> dict:
    raw = copy.deepcopy(dev_raw_config())
    raw["images"].update(images)
    return raw


def test_images_of_the_programs_release_pass_with_a_variant_and_a_digest() -> None:
    config = parse(_images(platform=f"r.example/flowerbed/platform:0.3.0-flwr{FLOWER_RELEASE}{DIGEST}",
                           job=f"r.example/flowerbed/job:0.3.0-flwr{FLOWER_RELEASE}-cpu"))
    assert config.images.job.endswith("-cpu")


@pytest.mark.parametrize(("images", "line"), [
    ({"platform": "r.example/flowerbed/platform:0.3.0-flwr1.41.0", "job": "r.example/flowerbed/job:0.3.0-flwr1.41.0"},
     "images.platform: 'r.example/flowerbed/platform:0.3.0-flwr1.41.0' runs Flower 1.41.0, but this flowerbed's "
     f"flags and configs are written for Flower {FLOWER_RELEASE}; expected images built by this checkout's make "
     f"images (-flwr{FLOWER_RELEASE}), or the flowerbed release made for Flower 1.41.0 (README: Upgrading Flower)"),
    ({"job": "r.example/flowerbed/job:0.3.0-flwr1.41.0"},
     "images.job: 'r.example/flowerbed/job:0.3.0-flwr1.41.0' runs Flower 1.41.0, but images.platform runs Flower "
     f"{FLOWER_RELEASE}; task pods must run the Flower of the SuperLink and SuperNodes they talk to"),
    ({"platform": "r.example/flowerbed/platform:0.3.0"},
     "images.platform: 'r.example/flowerbed/platform:0.3.0' does not say which Flower release it runs; expected a "
     f"tag ending in -flwr<release> as make images tags it (e.g. :0.1.0-flwr{FLOWER_RELEASE}, "
     f"-flwr{FLOWER_RELEASE}-cpu for the cpu job variant)"),
    ({"job": f"r.example/flowerbed/job{DIGEST}"}, f"images.job: 'r.example/flowerbed/job{DIGEST}' does not say"),
])
def test_a_stack_whose_images_run_another_flower_is_refused_in_one_line(images: dict, line: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse(_images(**images))
    assert str(err.value).startswith(line)
    assert "\n" not in str(err.value)

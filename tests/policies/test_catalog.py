import re
from pathlib import Path

import pytest
import yaml

from policies.catalog import load_catalog, parse_catalog
from policies.errors import ConfigError

EXAMPLES = Path(__file__).resolve().parents[2] / "gateway" / "examples"


def demo() -> dict:
    return yaml.safe_load((EXAMPLES / "demo.yaml").read_text())


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_examples_validate(path: Path) -> None:
    catalog = load_catalog(path)
    assert catalog.tiers and catalog.backends and catalog.models


def _broken(mutate) -> str:
    data = demo()
    mutate(data)
    with pytest.raises(ConfigError) as exc:
        parse_catalog(data, source="t.yaml")
    return str(exc.value)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d.update(colour="blue"), "colour"),
        (lambda d: d["tiers"]["flash"].update(context=5), "tiers.flash.context"),
        (lambda d: d["models"]["deepseek-chat"].update(tier="mini"), "unknown tier 'mini'"),
        (
            lambda d: d["backends"]["hosted"]["models"]["pro"].update(prices="nope"),
            "unknown 'nope'",
        ),
        (lambda d: d["backends"]["flash-local"].update(kind="tgi"), "backends.flash-local"),
        (
            lambda d: d["backends"]["flash-local"].update(replicas=[]),
            "replica URLs or a 'discovery'",
        ),
        (lambda d: d["prices"]["deepseek-flash"].reverse(), "strictly increasing"),
        (
            lambda d: d["prices"]["deepseek-flash"][0].update(effective="2026-04-24T00:00:00"),
            "timezone",
        ),
        (lambda d: d["prices"]["deepseek-flash"][0].update(output="-1"), "greater than or equal"),
        (lambda d: d.update(version=2), "version"),
    ],
)
def test_bad_catalog_names_the_problem(mutate, expected: str) -> None:
    assert expected in _broken(mutate)


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read catalog"):
        load_catalog(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("tiers: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_catalog(bad)


@pytest.mark.parametrize(
    ("name", "tier", "thinking"),
    [
        ("deepseek-chat", "flash", False),
        ("deepseek-reasoner", "flash", True),
        ("deepseek-v4-pro", "pro", None),
        ("claude-opus-4-5", "pro", None),
        ("claude-sonnet-4-5", "auto", None),
        ("auto", "auto", None),
    ],
)
def test_lookup_model_exact_then_glob(name: str, tier: str, thinking: bool | None) -> None:
    entry = parse_catalog(demo()).lookup_model(name)
    assert entry is not None and entry.tier == tier and entry.thinking is thinking


def test_backend_preference_order() -> None:
    data = demo()
    assert parse_catalog(data).backends_for_tier("flash") == ["flash-local", "hosted"]
    data["routing"]["backend_preference"] = ["hosted", "self_hosted"]
    assert parse_catalog(data).backends_for_tier("flash") == ["hosted", "flash-local"]


@pytest.mark.parametrize(
    ("old", "new", "key", "lines"),
    [
        # a second price under one price point: the last one would win, 1000x lower
        (
            '      output: "0.66"\n',
            '      output: "0.66"\n      output: "0.00066"\n',
            "output",
            (25, 26),
        ),
        ("routing:\n", "routing: {}\nrouting:\n", "routing", (97, 98)),
    ],
    ids=["price", "top level"],
)
def test_a_key_given_twice_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], old: str, new: str, key: str, lines
) -> None:
    from gateway.cli import main

    text = (EXAMPLES / "demo.yaml").read_text()
    path = tmp_path / "dup.yaml"
    path.write_text(text.replace(old, new, 1))
    expected = f"catalog {path}: key {key!r} given twice in one mapping (line {lines[0]} and line {lines[1]})"
    with pytest.raises(ConfigError) as exc:
        load_catalog(path)
    assert str(exc.value) == expected
    assert main(["check-config", str(path)]) == 2
    assert capsys.readouterr().err == f"tiergate: {expected}\n"


def test_a_merge_key_may_be_overridden(tmp_path: Path) -> None:
    text = (EXAMPLES / "demo.yaml").read_text()
    path = tmp_path / "merge.yaml"
    path.write_text(text + "x-base: &base {a: 1}\nx-more: {<<: *base, a: 2}\n")
    with pytest.raises(ConfigError, match="x-base"):  # unknown top-level keys, not duplicates
        load_catalog(path)


def test_the_documented_catalog_passes_its_own_check(tmp_path: Path) -> None:
    """docs/catalog.md's full example is a catalog `tiergate check-config` accepts."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "catalog.md").read_text()
    blocks = [b for b in re.findall(r"```yaml\n(.*?)```", doc, re.S) if b.startswith("version:")]
    assert blocks
    for i, block in enumerate(blocks):
        path = tmp_path / f"doc{i}.yaml"
        path.write_text(block)
        load_catalog(path)

"""The config file's JSON Schema stays in step with the loader.

Every valid config this project shows (tests/configs/good, the docs' config blocks, the
README's) passes the schema and loads; every invalid one (tests/configs/bad and the corpus
in tests/docs/invalid_configs, each with the loader's expected error) fails both — except the
few mistakes a JSON Schema cannot express, listed by name below with the reason, and checked
to still pass the schema so that the list cannot go stale.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from ratewall import (
    ALGORITHMS,
    CONCURRENCY,
    ConfigError,
    Policy,
    core,
    descriptors,
    keys,
    metrics,
    policy,
)
from ratewall import config as loader
from ratewall.config import _http, _store, load_config, parse_config
from ratewall.policy import FAILURE_MODES, parse_duration
from ratewall.stores import batching

from ._blocks import Block, config_blocks
from ._configs import ROOT, decode, schema, schema_errors

GOOD = sorted((ROOT / "tests" / "configs" / "good").iterdir())
BAD = sorted((ROOT / "tests" / "configs" / "bad").iterdir())
INVALID = sorted((Path(__file__).parent / "invalid_configs").iterdir())
EXTRA_VALID = [ROOT / "docs" / "envoy" / "ratewall.yaml"]

# Files of tests/configs/bad that only the loader rejects, and why no schema can.
LOADER_ONLY = {
    "client_ip_bad_cidr.json": "a /33 prefix: CIDR arithmetic is beyond a regular expression",
    "lease_above_limit.json": "a bound taken from another field (the policy's limit)",
    "route_unknown_policy.yaml": "a reference to a policy name defined elsewhere in the file",
    "duplicate_key.json": "JSON parsers keep the last duplicate; the loader reads the raw text",
    "duplicate_key.yaml": "YAML parsers keep the last duplicate; the loader reads the raw text",
}
# Files no editor parses as a document at all (the schema never sees them).
UNPARSABLE = {
    "duplicate_key.toml",
    "limits.ini",
    "nan.json",
    "syntax_error.json",
    "syntax_error.toml",
    "syntax_error.yaml",
    "two_documents.yaml",
    "unsafe_tag.yaml",
}


def language(path: Path) -> str:
    return path.suffix.lstrip(".")


def test_the_schema_is_a_valid_draft_2020_12_schema() -> None:
    shipped = schema()
    assert shipped["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(shipped)


def test_the_schema_ships_in_the_source_tree_the_wheel_is_built_from() -> None:
    # hatchling packages src/ratewall whole; the schema must sit inside it.
    assert (ROOT / "src" / "ratewall" / "schema" / "config.schema.json").is_file()


@pytest.mark.parametrize("path", GOOD + EXTRA_VALID, ids=lambda path: path.name)
def test_every_good_file_validates_and_loads(path: Path) -> None:
    assert schema_errors(decode(path.read_text("utf-8"), language(path))) == []
    load_config(path)


def test_there_are_docs_config_blocks() -> None:
    assert len(config_blocks()) >= 5


@pytest.mark.parametrize("block", config_blocks(), ids=lambda block: f"{block.page}:{block.line}")
def test_every_docs_config_block_validates_and_loads(block: Block) -> None:
    data = decode(block.code, block.language)
    assert schema_errors(data) == [], f"{block.page} line {block.line}"
    parse_config(data, source=f"{block.page}:{block.line}")


@pytest.mark.parametrize("path", BAD, ids=lambda path: path.name)
def test_every_bad_file_fails_the_schema_or_is_a_known_exception(path: Path) -> None:
    with pytest.raises(ConfigError):
        load_config(path)
    if path.name in UNPARSABLE:
        with pytest.raises(Exception):  # noqa: B017, PT011 - each parser has its own error type
            decode(path.read_text("utf-8"), language(path))
        return
    errors = schema_errors(decode(path.read_text("utf-8"), language(path)))
    if path.name in LOADER_ONLY:
        assert errors == [], f"the schema now catches {path.name}: drop it from LOADER_ONLY"
    else:
        assert errors, f"{path.name} passes the schema but the loader rejects it"


def test_the_exception_lists_name_existing_files() -> None:
    names = {path.name for path in BAD}
    assert set(LOADER_ONLY) <= names
    assert names >= UNPARSABLE


def expectation(path: Path) -> tuple[str, str]:
    """The loader's expected error, from the file's first line: ``# loader: FIELD: REASON``."""
    first = path.read_text("utf-8").splitlines()[0]
    found = re.fullmatch(r"# loader: (\S+): (.+)", first)
    assert found, f"{path.name} must start with '# loader: FIELD: REASON'"
    return found[1], found[2]


def test_the_invalid_corpus_covers_every_section() -> None:
    fields = {expectation(path)[0].split(".")[0].split("[")[0] for path in INVALID}
    assert fields >= {"policies", "routes", "client_ip", "domains", "timeout", "metrics"}
    assert {path.suffix for path in INVALID} >= {".yaml", ".toml"}


@pytest.mark.parametrize("path", INVALID, ids=lambda path: path.name)
def test_every_invalid_config_fails_the_loader_as_expected_and_the_schema(path: Path) -> None:
    field, reason = expectation(path)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.field == field
    assert reason in caught.value.reason
    assert schema_errors(decode(path.read_text("utf-8"), language(path)))


def test_the_readme_config_examples_validate_together() -> None:
    """The README's YAML blocks (the long form and its routes) make one file that passes the
    schema, as test_readme checks it loads."""
    readme = (ROOT / "README.md").read_text("utf-8")
    merged: dict[str, object] = {}
    for block in re.findall(r"^```yaml\n(.*?)^```$", readme, re.MULTILINE | re.DOTALL):
        loaded = decode(block, "yaml")
        assert isinstance(loaded, dict)
        merged.update(loaded)
    assert "policies" in merged
    assert schema_errors(merged) == []


# --- the schema's vocabulary is the code's ------------------------------------------------
#
# When a setting, a policy field, an algorithm or a store scheme is added to the code, these
# fail and name what the schema lacks (the schema's $comment says where each goes).


def defs() -> dict[str, Any]:
    found: dict[str, Any] = schema()["$defs"]
    return found


def test_the_settings_are_the_loaders() -> None:
    assert set(defs()["longForm"]["properties"]) == {"policies", *loader.SETTINGS}


def test_the_policy_fields_are_the_policys() -> None:
    assert tuple(defs()["policy"]["properties"]) == policy._FIELDS
    assert set(defs()["variant"]["properties"]) == set(policy._VARIANT_FIELDS)


def test_the_algorithms_and_failure_modes_are_the_codes() -> None:
    assert tuple(defs()["algorithm"]["enum"]) == (*ALGORITHMS, CONCURRENCY)
    assert tuple(defs()["failureMode"]["enum"]) == FAILURE_MODES
    assert [value for value in defs()["longForm"]["properties"]["metrics"]["enum"] if value] == [
        *metrics.BACKENDS
    ]


def test_the_store_schemes_are_the_codes() -> None:
    pattern = defs()["storeUrl"]["pattern"]
    for scheme in loader.STORE_SCHEMES:
        assert re.match(pattern, f"{scheme}://x"), scheme
    assert not re.match(pattern, "http://x")


def test_the_http_sections_fields_are_the_loaders() -> None:
    assert tuple(defs()["route"]["properties"]) == _http._ROUTE_FIELDS
    assert tuple(defs()["routeLimit"]["properties"]) == _http._LIMIT_FIELDS
    assert tuple(defs()["clientIp"]["properties"]) == _http._CLIENT_IP_FIELDS
    assert tuple(defs()["onMissingIdentity"]["enum"]) == loader.ON_MISSING_IDENTITY
    assert tuple(defs()["tierHeader"]["properties"]) == _http._TIER_FIELDS
    assert tuple(defs()["breaker"]["properties"]) == _store._BREAKER_FIELDS
    assert tuple(defs()["batching"]["properties"]) == _store._BATCHING_FIELDS
    assert tuple(defs()["descriptor"]["properties"]) == descriptors._DOMAIN_ENTRY_FIELDS


def test_the_schema_defaults_are_the_codes() -> None:
    settings = defs()["longForm"]["properties"]
    assert settings["key_prefix"]["default"] == keys.DEFAULT_PREFIX
    assert settings["local_cache_size"]["default"] == loader.DEFAULT_LOCAL_CACHE_SIZE
    assert parse_duration(settings["timeout"]["default"]) == loader.DEFAULT_TIMEOUT
    breaker, batch = defs()["breaker"]["properties"], defs()["batching"]["properties"]
    assert breaker["threshold"]["default"] == core.DEFAULT_BREAKER_THRESHOLD
    assert breaker["threshold"]["maximum"] == _store.MAX_BREAKER_THRESHOLD
    assert parse_duration(breaker["cooldown"]["default"]) == core.DEFAULT_BREAKER_COOLDOWN
    assert batch["max_in_flight"]["default"] == batching.DEFAULT_MAX_IN_FLIGHT
    assert batch["max_in_flight"]["maximum"] == _store.MAX_IN_FLIGHT
    assert batch["max_batch"]["default"] == batching.DEFAULT_MAX_BATCH
    assert batch["max_batch"]["maximum"] == batching.MAX_BATCH
    assert defs()["algorithm"]["default"] == Policy(1, 1).algorithm
    assert defs()["failureMode"]["default"] == Policy(1, 1).failure_mode

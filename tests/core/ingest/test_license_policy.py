import pyarrow as pa
import pytest

from dataplatform.core.ingest.license_policy import (
    LicensePolicy,
    apply_license_policy,
    normalize_license,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("CC BY 4.0", "cc-by-4.0"),
        ("CC-BY-SA-4.0", "cc-by-sa-4.0"),
        ("cc_by_nc_4.0", "cc-by-nc-4.0"),
        ("https://creativecommons.org/licenses/by-sa/4.0/", "cc-by-sa-4.0"),
        ("http://creativecommons.org/publicdomain/zero/1.0/", "cc0-1.0"),
        ("https://creativecommons.org/publicdomain/mark/1.0/", "pdm-1.0"),
        ("CC0", "cc0"),
        ("CC-0 1.0", "cc0-1.0"),
        ("Public Domain", "public-domain"),
        ("unknown", None),
        ("  ", None),
        (None, None),
    ],
)
def test_normalize_license(raw, expected):
    assert normalize_license(raw) == expected


def test_default_allow_list_admits_open_licenses_and_not_nc_or_nd():
    policy = LicensePolicy()
    assert policy.status("CC-BY-4.0") == "allowed"
    assert policy.status("cc0-1.0") == "allowed"
    assert policy.status("CC BY-SA 3.0") == "allowed"
    assert policy.status("CC-BY-NC-4.0") == "not_allowed"
    assert policy.status("CC-BY-ND-4.0") == "not_allowed"
    assert policy.status("all rights reserved") == "not_allowed"
    assert policy.status("unknown") == "missing"
    assert policy.status(None) == "missing"


def _pairs() -> pa.Table:
    return pa.table(
        {
            "pair_id": ["a", "b", "c", "d"],
            "date": ["2025-01-01"] * 4,
            "license": ["CC-BY-4.0", "CC-BY-NC-4.0", None, "unknown"],
            "text": ["t"] * 4,
            "url": ["u"] * 4,
        }
    )


def test_drop_not_allowed_and_flag_missing():
    kept, ledger = apply_license_policy(_pairs(), LicensePolicy(), "raw_pairs")
    assert kept.column("pair_id").to_pylist() == ["a", "c", "d"]
    assert kept.column("license_status").to_pylist() == ["allowed", "missing", "missing"]
    assert ledger.column("pair_id").to_pylist() == ["b"]
    assert ledger.column("reason").to_pylist() == ["license_not_allowed"]
    assert ledger.column("stage").to_pylist() == ["raw_pairs"]
    assert "'CC-BY-NC-4.0' (normalised cc-by-nc-4.0)" in ledger.column("detail")[0].as_py()


def test_drop_missing_and_flag_not_allowed():
    policy = LicensePolicy(on_not_allowed="flag", on_missing="drop")
    kept, ledger = apply_license_policy(_pairs(), policy, "raw_pairs")
    assert kept.column("pair_id").to_pylist() == ["a", "b"]
    assert kept.column("license_status").to_pylist() == ["allowed", "not_allowed"]
    assert ledger.column("pair_id").to_pylist() == ["c", "d"]
    assert set(ledger.column("reason").to_pylist()) == {"license_missing"}


def test_custom_allow_list_uses_normalised_patterns():
    policy = LicensePolicy(allow=("CC BY *",), on_missing="drop")
    assert policy.allow == ("cc-by-*",)
    assert policy.status("cc-by-nc-4.0") == "allowed"
    assert policy.status("cc0-1.0") == "not_allowed"


def test_unknown_action_is_an_error():
    with pytest.raises(ValueError, match="on_missing must be one of"):
        LicensePolicy(on_missing="ignore")

"""Identity's settings from the environment (GATEHOUSE_IDENTITY_*)."""

from __future__ import annotations

import pytest

from gatehouse.kit.config import ConfigError
from gatehouse_identity.config import IdentityConfig


def test_numbers_parse_to_their_field_type():
    config = IdentityConfig.from_env(
        {"GATEHOUSE_IDENTITY_ACCESS_TOKEN_TTL": "600", "GATEHOUSE_IDENTITY_LOCKOUT_WINDOW": "1.5"}
    )
    assert config.access_token_ttl == 600 and type(config.access_token_ttl) is int
    assert config.lockout_window == 1.5


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("ACCESS_TOKEN_TTL", "0"),
        ("ACCESS_TOKEN_TTL", "15m"),
        ("ACCESS_TOKEN_TTL", "1.5"),  # a whole number of seconds
        ("LOCKOUT_WINDOW", "-1"),
        ("LOCKOUT_WINDOW", "inf"),  # accepted before: a lockout window that never ends
        ("LOCKOUT_DURATION", "nan"),  # accepted before
        ("PROVISION_SERVICE_ACCOUNTS", "maybe"),
    ],
)
def test_bad_values_name_the_variable(variable, value):
    with pytest.raises(ConfigError, match=f"GATEHOUSE_IDENTITY_{variable}"):
        IdentityConfig.from_env({f"GATEHOUSE_IDENTITY_{variable}": value})

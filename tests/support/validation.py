"""Reading the refusals of the domain's validators in tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from app.domain.errors import ValidationFailed


def field_errors(call: Callable[[], object]) -> dict[str, str]:
    """``call`` must refuse its input: the message of each field it names, by field."""
    with pytest.raises(ValidationFailed) as caught:
        call()
    return {error.field: error.message for error in caught.value.errors}

"""Which host a signed webhook is for. Without PUBLIC_BASE_URL the signature is checked
against the request's own URL, whose host the caller chooses (``Host``, or behind trusted
proxies ``X-Forwarded-Host``). Twilio signs every app of an account with the same auth token,
so a request captured from another app of the account carries a valid signature for *that*
host: only the hosts in PUBLIC_HOSTS are ours."""

from __future__ import annotations

import pytest

from app.settings import Settings
from tests.support.app_harness import WEBHOOK, AppHarness, fake_model, form, signature

OURS = "bot.example.org"
THEIRS = "other-app.example.net"  # another app of the same Twilio account


def forwarded(fields: dict, host: str) -> dict[str, str]:
    """Headers of a request Twilio signed for ``https://<host>/twilio/messages``, as the
    trusted proxy forwards it."""
    return {
        "X-Twilio-Signature": signature(fields, url=f"https://{host}{WEBHOOK}"),
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": host,
    }


def test_behind_a_proxy_a_request_signed_for_another_host_is_refused(
    harness: AppHarness,
) -> None:
    model = fake_model("hello")
    app = harness.app(model, public_base_url=None, public_hosts=(OURS,), trusted_proxy_hops=1)
    client = app.test_client()

    theirs = form("signed for the other app")
    refused = client.post(WEBHOOK, data=theirs, headers=forwarded(theirs, THEIRS))
    ours = form("signed for us")
    accepted = client.post(WEBHOOK, data=ours, headers=forwarded(ours, OURS))

    assert refused.status_code == 403
    assert accepted.status_code == 200
    assert harness.message_uids() == [ours["MessageSid"], ours["MessageSid"] + ":1"]
    assert len(model.calls) == 1


def test_without_a_proxy_the_host_header_is_checked_too(harness: AppHarness) -> None:
    app = harness.app(fake_model(), public_base_url=None, public_hosts=(f"{OURS}:8443",))
    client = app.test_client()
    fields = form("hi")

    def post(host: str) -> int:
        headers = {"X-Twilio-Signature": signature(fields, url=f"http://{host}{WEBHOOK}")}
        response = client.post(WEBHOOK, data=fields, headers=headers, base_url=f"http://{host}")
        return response.status_code

    assert post(f"{THEIRS}:8443") == 403
    assert post(f"{OURS}:9999") == 403  # the listed port only
    assert post(f"{OURS}:8443") == 200


def test_trusted_proxy_hops_need_public_hosts_or_a_public_base_url() -> None:
    with pytest.raises(
        ValueError, match="TRUSTED_PROXY_HOPS needs PUBLIC_BASE_URL or PUBLIC_HOSTS"
    ):
        Settings.from_env({"TRUSTED_PROXY_HOPS": "1"})
    settings = Settings.from_env({"TRUSTED_PROXY_HOPS": "1", "PUBLIC_HOSTS": f"{OURS}, b.example"})
    assert settings.public_hosts == (OURS, "b.example")
    assert Settings(trusted_proxy_hops=1, public_base_url=f"https://{OURS}").trusted_proxy_hops

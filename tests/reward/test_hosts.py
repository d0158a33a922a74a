"""The host policy: data goes to this machine, to hosts the recipe lists, or to the URL the recipe itself names;
never in clear text to another machine; never somewhere only an environment variable said."""

from __future__ import annotations

import asyncio

import pytest

from reward.client import ChatClient
from reward.hosts import AllowedHost, HostNotAllowed, check_endpoint
from reward.urls import is_local


def test_local_servers_are_always_allowed_over_plain_http():
    for url in ("http://127.0.0.1:8000/v1", "http://localhost:1/v1", "http://[::1]:8000/v1", "http://127.9.9.9/v1"):
        assert check_endpoint(url, [], named_in_recipe=False) == url


def test_names_that_only_look_local_are_remote():
    # A prefix test would take 127.0.0.1.nip.io (resolvable anywhere) for this machine and wave it through.
    for url in ("http://127.0.0.1.nip.io/v1", "http://localhost.example.com/v1"):
        assert not is_local(url)
        with pytest.raises(HostNotAllowed, match="unencrypted"):
            check_endpoint(url)


def test_remote_host_needs_https():
    with pytest.raises(HostNotAllowed) as info:
        check_endpoint("http://judge.example.com:8000/v1")
    msg = str(info.value)
    assert "judge.base_url" in msg and "https://" in msg and "'http://judge.example.com:8000'" in msg
    assert check_endpoint("https://judge.example.com/v1") == "https://judge.example.com/v1"


def test_plain_http_only_where_an_allowed_hosts_entry_says_http():
    entries = ["http://10.0.0.5:8000"]
    assert check_endpoint("http://10.0.0.5:8000/v1", entries, named_in_recipe=False)
    with pytest.raises(HostNotAllowed, match="does not list"):
        check_endpoint("http://10.0.0.5:9000/v1", entries)
    with pytest.raises(HostNotAllowed, match="unencrypted"):
        check_endpoint("http://10.0.0.5:8000/v1", ["10.0.0.5"])


def test_url_from_the_environment_needs_an_allowed_hosts_entry():
    with pytest.raises(HostNotAllowed) as info:
        check_endpoint("https://proxy.example.net/v1", None, named_in_recipe=False)
    assert "not written in the recipe" in str(info.value) and "judge.allowed_hosts" in str(info.value)
    assert check_endpoint("https://proxy.example.net/v1", ["proxy.example.net"], named_in_recipe=False)


def test_an_allowed_hosts_list_is_the_whole_policy():
    # Even a base_url written in the recipe is refused when the recipe's list leaves its host out.
    with pytest.raises(HostNotAllowed) as info:
        check_endpoint("https://u:pw-s3cret@api.other.com/v1?key=k-s3cret", ["api.openai.com"],
                       config_name="reward")
    msg = str(info.value)
    assert "reward.allowed_hosts" in msg and "'api.other.com'" in msg and "api.openai.com" in msg
    assert "s3cret" not in msg  # the message shows the public URL only


def test_entry_forms():
    assert check_endpoint("https://r1.openai.azure.com/v1", ["*.openai.azure.com"])
    with pytest.raises(HostNotAllowed):  # a wildcard covers sub-domains, not the bare domain
        check_endpoint("https://openai.azure.com/v1", ["*.openai.azure.com"])
    assert check_endpoint("https://gw.example.com:8443/v1", ["gw.example.com:8443"])
    with pytest.raises(HostNotAllowed):
        check_endpoint("https://gw.example.com/v1", ["gw.example.com:8443"])
    assert check_endpoint("https://API.Example.com./v1", ["https://api.example.com/v1"])  # a URL entry: its host
    for bad in ("*", "", "api.example.com/v1", "host:port", "ftp://x.org"):
        with pytest.raises(HostNotAllowed, match="allowed_hosts"):
            AllowedHost.parse(bad, "judge.allowed_hosts")
    with pytest.raises(HostNotAllowed, match="list of hosts"):
        check_endpoint("https://api.example.com/v1", "api.example.com")  # type: ignore[arg-type]


def test_unreadable_urls_are_refused_with_the_key_named():
    for url in ("api.openai.com/v1", "https://[::1/v1", "file:///etc/passwd"):
        with pytest.raises(HostNotAllowed, match="judge.base_url"):
            check_endpoint(url)


def test_chat_client_checks_the_policy_before_sending_anything(judge_server):
    with pytest.raises(HostNotAllowed, match="judge.allowed_hosts"):
        ChatClient("https://judge.example.com/v1", "m", api_key_env=None, allowed_hosts=["api.openai.com"])
    with pytest.raises(HostNotAllowed, match="not written in the recipe"):
        ChatClient("https://judge.example.com/v1", "m", api_key_env=None, named_in_recipe=False)
    client = ChatClient(judge_server.base_url, "m", api_key_env=None, allowed_hosts=[], named_in_recipe=False,
                        progress=False)  # local: allowed whatever the list says
    assert asyncio.run(client.chat([{"role": "user", "content": "你好"}])).text.startswith("reply to:")
